"""Backfill planning, clock-drift flagging and profile-entry conversion of DLMS meters (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.agent.backfill import check_clock, is_backfill, latest_capture, plan_fetch
from meterchain.agent.config import ConfigError, load_config, parse_config
from meterchain.agent.meters_dlms import (
    DlmsProfileError,
    ProfileLayout,
    check_layout,
    profile_intervals,
)
from meterchain.bridge.dlms.axdr import Data, Tag
from meterchain.bridge.dlms.cosem import (
    CaptureObject,
    ClassId,
    ProfileEntry,
    ProfileValue,
    QuantityKind,
    RegisterValue,
)
from meterchain.bridge.dlms.obis import ACTIVE_EXPORT_OBIS, ACTIVE_IMPORT_OBIS, Obis
from meterchain.contract.reading import ClockSync

from tests.support.paths import REPO_ROOT

P = 900
DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


# -- plan_fetch ---------------------------------------------------------------------------------


def test_nothing_is_due_when_the_newest_interval_is_signed() -> None:
    assert (
        plan_fetch(last_end=T0, scanned_to=None, now=T0 + 899, period=P, horizon=DAY, batch=96)
        is None
    )


def test_the_interval_just_ended_is_fetched_alone() -> None:
    window = plan_fetch(
        last_end=T0, scanned_to=None, now=T0 + P + 3, period=P, horizon=DAY, batch=96
    )
    assert window is not None
    assert (window.first, window.last, window.more, window.lost) == (T0 + P, T0 + P, False, 0)


def test_an_outage_is_fetched_oldest_first_in_bounded_batches() -> None:
    now = T0 + 10 * P + 1
    window = plan_fetch(last_end=T0, scanned_to=None, now=now, period=P, horizon=DAY, batch=4)
    assert window is not None
    assert (window.first, window.last, window.more) == (T0 + P, T0 + 4 * P, True)
    assert window.count(P) == 4
    window = plan_fetch(
        last_end=T0 + 8 * P, scanned_to=None, now=now, period=P, horizon=DAY, batch=4
    )
    assert window is not None
    assert (window.first, window.last, window.more) == (T0 + 9 * P, T0 + 10 * P, False)


def test_a_first_start_looks_back_as_far_as_the_horizon() -> None:
    now = T0 + 3 * DAY + 10
    window = plan_fetch(last_end=None, scanned_to=None, now=now, period=P, horizon=DAY, batch=1000)
    assert window is not None
    assert window.first == T0 + 2 * DAY and window.last == T0 + 3 * DAY
    assert window.lost == 0
    none = plan_fetch(last_end=None, scanned_to=None, now=now, period=P, horizon=0, batch=1000)
    assert none is not None and none.first == none.last == T0 + 3 * DAY


def test_a_gap_longer_than_the_horizon_is_counted_as_lost() -> None:
    now = T0 + 2 * DAY
    window = plan_fetch(last_end=T0, scanned_to=None, now=now, period=P, horizon=DAY, batch=96)
    assert window is not None
    assert window.first == T0 + DAY
    assert window.lost == 95  # T0+P … T0+DAY−P: older than the horizon


def test_a_stretch_the_meter_had_nothing_in_is_not_asked_for_again() -> None:
    now = T0 + 10 * P + 1
    window = plan_fetch(
        last_end=T0, scanned_to=T0 + 6 * P, now=now, period=P, horizon=DAY, batch=96
    )
    assert window is not None and window.first == T0 + 7 * P


def test_unaligned_progress_starts_at_the_next_capture() -> None:
    window = plan_fetch(
        last_end=T0 + 10, scanned_to=None, now=T0 + 2 * P, period=P, horizon=DAY, batch=9
    )
    assert window is not None and window.first == T0 + P


@pytest.mark.parametrize(
    ("period", "batch", "horizon"), [(0, 1, 1), (7, 1, 1), (900, 0, 1), (900, 1, -1)]
)
def test_bad_plan_parameters_are_refused(period: int, batch: int, horizon: int) -> None:
    with pytest.raises(ValueError):
        plan_fetch(
            last_end=None, scanned_to=None, now=T0, period=period, horizon=horizon, batch=batch
        )


@settings(max_examples=60, deadline=None)
@given(
    behind=st.integers(0, 400),
    batch=st.integers(1, 50),
    horizon_intervals=st.integers(0, 300),
    phase=st.integers(0, P - 1),
)
def test_draining_a_backlog_signs_every_interval_in_the_horizon_once_in_order(
    behind: int, batch: int, horizon_intervals: int, phase: int
) -> None:
    now = T0 + 1000 * P + phase
    latest = latest_capture(now, P)
    last_end = latest - behind * P
    signed: list[int] = []
    for _ in range(1000):
        window = plan_fetch(
            last_end=last_end,
            scanned_to=None,
            now=now,
            period=P,
            horizon=horizon_intervals * P,
            batch=batch,
        )
        if window is None:
            break
        assert window.count(P) <= batch and window.first % P == 0
        signed.extend(range(window.first, window.last + 1, P))  # a meter that holds everything
        last_end = window.last
    expected_first = max(latest - behind * P, latest - (horizon_intervals + 1) * P) + P
    assert signed == list(range(expected_first, latest + 1, P))


def test_backfill_means_read_after_the_interval_was_the_newest() -> None:
    assert not is_backfill(T0 + P, T0 + P + 5, P)
    assert is_backfill(T0, T0 + P + 5, P)


# -- check_clock --------------------------------------------------------------------------------


def test_a_clock_within_the_threshold_is_synced() -> None:
    check = check_clock(
        T0 + 20, asked_at=T0, answered_at=T0 + 0.2, threshold=30, gateway=ClockSync.SYNCED
    )
    assert check.sync is ClockSync.SYNCED and not check.drifted
    assert check.drift == pytest.approx(19.9)


def test_a_clock_beyond_the_threshold_is_drifted_either_way() -> None:
    for offset in (600, -600):
        check = check_clock(
            T0 + offset, asked_at=T0, answered_at=T0 + 0.2, threshold=30, gateway=ClockSync.SYNCED
        )
        assert check.sync is ClockSync.DRIFTED


def test_a_slow_read_does_not_raise_a_false_alarm() -> None:
    # The answer took 20 s: the meter's 40 s may have been read at any moment of it.
    check = check_clock(
        T0 + 40, asked_at=T0, answered_at=T0 + 20, threshold=30, gateway=ClockSync.SYNCED
    )
    assert check.sync is ClockSync.SYNCED and check.uncertainty == pytest.approx(11)


def test_an_unsynchronised_gateway_cannot_judge_and_a_doubtful_meter_is_drifted() -> None:
    args = {"asked_at": T0, "answered_at": T0 + 0.1, "threshold": 30}
    assert check_clock(T0 + 999, gateway=ClockSync.UNSYNCED, **args).sync is ClockSync.UNSYNCED  # type: ignore[arg-type]
    doubtful = check_clock(T0, gateway=ClockSync.SYNCED, meter_trustworthy=False, **args)  # type: ignore[arg-type]
    assert doubtful.sync is ClockSync.DRIFTED
    assert check_clock(T0, gateway=ClockSync.UNKNOWN, **args).sync is ClockSync.SYNCED  # type: ignore[arg-type]


# -- profile entries → interval values ----------------------------------------------------------

CLOCK = CaptureObject(ClassId.CLOCK, Obis(0, 0, 1, 0, 0, 255), 2)
IMPORT = CaptureObject(ClassId.REGISTER, ACTIVE_IMPORT_OBIS, 2)
EXPORT = CaptureObject(ClassId.REGISTER, ACTIVE_EXPORT_OBIS, 2)
WH, KWH_SCALER = 30, 3


def entry(
    stamp: int,
    import_value: RegisterValue,
    export_value: RegisterValue | None = None,
    status: int | None = 0,
) -> ProfileEntry:
    values = [
        ProfileValue(
            IMPORT, QuantityKind.CUMULATIVE, import_value, Data(Tag.UINT32, import_value.value)
        )
    ]
    if export_value is not None:
        values.append(
            ProfileValue(
                EXPORT, QuantityKind.CUMULATIVE, export_value, Data(Tag.UINT32, export_value.value)
            )
        )
    return ProfileEntry(stamp, status, False, tuple(values))


def test_entries_become_whole_wh_intervals_and_odd_entries_are_skipped() -> None:
    layout = ProfileLayout(P, has_export=True)
    entries = [
        entry(T0, RegisterValue(1_000, 0, WH), RegisterValue(5, 0, WH)),
        entry(T0 + 7, RegisterValue(1_001, 0, WH), RegisterValue(5, 0, WH)),  # power-up entry
        entry(T0 + P, RegisterValue(2, KWH_SCALER, WH), RegisterValue(6, 0, WH), status=0x02),
        entry(T0 + P, RegisterValue(2_001, 0, WH), RegisterValue(6, 0, WH)),  # repeated stamp
        entry(T0 + 2 * P, RegisterValue(20_015, -1, WH), RegisterValue(7, 0, WH)),  # 2001.5 Wh
        entry(T0 + 3 * P, RegisterValue(3_000, 0, 27), RegisterValue(7, 0, WH)),  # W, not Wh
        entry(T0 + 4 * P, RegisterValue(3_000, 0, WH), RegisterValue(8, 0, WH)),
        entry(T0 + 9 * P, RegisterValue(9_000, 0, WH), RegisterValue(9, 0, WH)),  # not asked for
    ]
    intervals, skipped = profile_intervals(entries, layout, first=T0, last=T0 + 8 * P)
    assert [(i.end, i.import_wh, i.export_wh, i.clock_doubtful) for i in intervals] == [
        (T0, 1_000, 5, False),
        (T0 + P, 2_000, 6, True),
        (T0 + 4 * P, 3_000, 8, False),
    ]
    reasons = dict(skipped)
    assert "grid" in reasons[T0 + 7] and "repeated" in reasons[T0 + P]
    assert "whole number" in reasons[T0 + 2 * P] and "not Wh" in reasons[T0 + 3 * P]
    assert "outside" in reasons[T0 + 9 * P]


def test_without_an_export_column_export_is_zero_only_by_layout() -> None:
    intervals, _ = profile_intervals(
        [entry(T0, RegisterValue(7, 0, WH))], ProfileLayout(P, has_export=False), first=T0, last=T0
    )
    assert intervals[0].export_wh == 0


def test_a_profile_of_interval_values_only_is_refused_with_its_columns() -> None:
    interval_only = [(Obis(1, 0, 1, 29, 0, 255), QuantityKind.INTERVAL)]
    with pytest.raises(DlmsProfileError, match="interval values only") as caught:
        check_layout(interval_only, P)
    assert caught.value.context["captures"] == ["1-0:1.29.0.255"]
    assert check_layout([(ACTIVE_IMPORT_OBIS, QuantityKind.CUMULATIVE)], P) == ProfileLayout(P, False)
    both = [(ACTIVE_IMPORT_OBIS, QuantityKind.CUMULATIVE), (ACTIVE_EXPORT_OBIS, QuantityKind.CUMULATIVE)]
    assert check_layout(both, P).has_export
    with pytest.raises(DlmsProfileError, match="divide a day"):
        check_layout(both, 7 * 60 + 1)


# -- config -------------------------------------------------------------------------------------

BASE = {
    "device_id": "gw-1",
    "key_path": "device.key",
    "backend_url": "http://127.0.0.1:8000",
    "broker": {"url": "mqtt://127.0.0.1"},
}


def dlms_meter(**keys: object) -> dict[str, object]:
    return {"name": "main", "model": "dlms", "port": "/dev/ttyUSB1", **keys}


def test_a_dlms_meter_config_with_defaults_and_a_password_file(tmp_path: Path) -> None:
    (tmp_path / "lls").write_text("s3cret\n")
    config = parse_config(
        {
            **BASE,
            "meters": [
                dlms_meter(
                    client_address=1,
                    server_address=1,
                    physical_address=17,
                    password_file="lls",
                    clock_drift_threshold_seconds=10,
                    backfill_days=2,
                )
            ],
        },
        tmp_path / "agent.toml",
    )
    settings_ = config.meters[0].dlms
    assert settings_ is not None
    assert (settings_.client_address, settings_.server_address, settings_.physical_address) == (
        1,
        1,
        17,
    )
    assert settings_.password == "s3cret" and "s3cret" not in repr(settings_)
    assert settings_.profile_obis == "1-0:99.1.0.255" and settings_.backfill_batch_intervals == 96
    assert config.meters[0].baudrate == 9600 and config.meters[0].timeout_seconds == 2.0


@pytest.mark.parametrize(
    ("keys", "bad_key"),
    [
        ({"modbus_id": 1}, "meters[0].modbus_id"),
        ({"client_address": 200}, "meters[0].client_address"),
        ({"server_address": -1}, "meters[0].server_address"),
        ({"profile_obis": "99.1.0"}, "meters[0].profile_obis"),
        ({"password": "a", "password_file": "x"}, "meters[0].password_file"),
        ({"password_file": "missing"}, "meters[0].password_file"),
        ({"password": ""}, "meters[0].password"),
        ({"clock_drift_threshold_seconds": 0}, "meters[0].clock_drift_threshold_seconds"),
        ({"backfill_batch_intervals": 0}, "meters[0].backfill_batch_intervals"),
        ({"baudrate": 9601}, "meters[0].baudrate"),
    ],
)
def test_bad_dlms_keys_name_the_key(tmp_path: Path, keys: dict[str, object], bad_key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "meters": [dlms_meter(**keys)]}, tmp_path / "agent.toml")
    assert caught.value.context["key"] == bad_key


def test_dlms_meters_share_a_line_at_one_speed_and_distinct_addresses(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    a = dlms_meter(name="a", physical_address=17)
    b = dlms_meter(name="b", physical_address=20)
    config = parse_config({**BASE, "meters": [a, b]}, file)
    assert [(m.port, m.dlms.physical_address) for m in config.meters if m.dlms] == [
        ("/dev/ttyUSB1", 17), ("/dev/ttyUSB1", 20)]
    modbus = {"name": "pv", "model": "sdm120", "port": "/dev/ttyUSB1", "baudrate": 9600,
              "modbus_id": 1}
    for meters, key, why in [
        ([a, dlms_meter(name="b", physical_address=17)], "meters[1].physical_address",
         "same HDLC address"),
        ([a, dlms_meter(name="b")], None, None),  # 1/17 and the 1-byte address 1 differ
        ([dlms_meter(name="a"), dlms_meter(name="b")], "meters[1].physical_address",
         "same HDLC address"),
        ([a, {**b, "baudrate": 19200}], "meters[1].baudrate", "answer at one speed"),
        ([modbus, a], "meters[1].port", "Modbus meter 'pv'"),
        ([a, modbus], "meters[0].port", "Modbus meter 'pv'"),
    ]:
        if key is None:
            assert len(parse_config({**BASE, "meters": meters}, file).meters) == 2
            continue
        with pytest.raises(ConfigError, match=why) as caught:
            parse_config({**BASE, "meters": meters}, file)
        assert caught.value.context["key"] == key


def test_the_dlms_example_in_the_docs_parses(tmp_path: Path) -> None:
    docs = (REPO_ROOT / "docs" / "agent.md").read_text()
    section = docs.split('## DLMS/COSEM meters (`model = "dlms"`)', 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "meter.lls").write_text("12345678\n")
    top = "\n".join(f"{k} = {v!r}" for k, v in BASE.items() if k != "broker")
    text = f'{top}\n[broker]\nurl = "mqtt://127.0.0.1"\n{example}'.replace("'", '"')
    (tmp_path / "agent.toml").write_text(text)
    config = load_config(tmp_path / "agent.toml")
    dlms = config.meters[0].dlms
    assert dlms is not None and dlms.physical_address == 17 and dlms.password == "12345678"
