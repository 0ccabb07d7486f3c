"""A meter exchange: the agent flags it, the netting engine never reads it as negative energy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from meterchain.agent.exchange import MeterSerials
from meterchain.agent.meters import MeterSnapshot
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox
from meterchain.agent.scheduler import Poller
from meterchain.backend.settlement.netting import RegisterError, RegisterReading, start_track
from meterchain.backend.settlement.netting.exchange import advance_reading
from meterchain.contract.message import parse_message
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, ClockSync, StatusFlag
from meterchain.contract.signing import generate_private_key_pem, load_signer

INTERVAL = 900


class SwappableMeter:
    """A meter on one bus position; an electrician swaps it for a new one between two polls."""

    name = "house"

    def __init__(self) -> None:
        self.snapshot = MeterSnapshot("OLD-1", import_wh=5_000_000, export_wh=40_000)

    async def read(self) -> MeterSnapshot:
        return self.snapshot

    def close(self) -> None:
        pass


class FixedClock:
    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value

    async def sleep_until(self, deadline: float) -> None:
        self.value = deadline


async def _poll(tmp_path: Path, meter: SwappableMeter, ends: list[int],
                swap_after: int) -> list[tuple[str, int, int]]:
    outbox = await Outbox.open(tmp_path / "outbox.sqlite", "gw-1")
    try:
        for index, end in enumerate(ends):
            poller = Poller(device="gw-1", signer=load_signer(generate_private_key_pem()),
                            sources=[meter], outbox=outbox, clock=FixedClock(end),
                            interval=INTERVAL, metrics=AgentMetrics(),
                            clock_sync=lambda: ClockSync.SYNCED,
                            serials=MeterSerials.load(tmp_path / "meter-serials.json"))
            await poller.poll_once(end)  # a new Poller each cycle: a restarted agent remembers
            if index == swap_after:
                meter.snapshot = MeterSnapshot("NEW-2", import_wh=12, export_wh=0)
            else:
                meter.snapshot = MeterSnapshot(meter.snapshot.serial,
                                               meter.snapshot.import_wh + 250,
                                               meter.snapshot.export_wh + 3)
        rows = await outbox.readings()
    finally:
        await outbox.close()
    out = []
    for row in rows:
        reading = parse_message(row.message).reading
        out.append((reading.meter, reading.registers[IMPORT_OBIS].value, reading.status))
        assert reading.registers[EXPORT_OBIS].unit == "Wh"
    return out


async def test_agent_flags_the_first_reading_of_a_new_meter(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    ends = [INTERVAL * k for k in range(10, 14)]
    rows = await _poll(tmp_path, SwappableMeter(), ends, swap_after=1)
    assert rows == [("OLD-1", 5_000_000, 0), ("OLD-1", 5_000_250, 0),
                    ("NEW-2", 12, StatusFlag.METER_EXCHANGED), ("NEW-2", 262, 0)]
    assert "event=meter_exchanged meter=house old_serial=OLD-1 new_serial=NEW-2" in caplog.text
    assert (tmp_path / "meter-serials.json").read_text().count("NEW-2") == 1


def _reading(t: int, serial: str, imp: int, exp: int = 0) -> RegisterReading:
    return RegisterReading("m1", t, serial, imp, exp)


def test_an_exchange_gives_no_negative_energy_and_a_drop_without_one_is_an_error() -> None:
    track = start_track(_reading(9000, "OLD-1", 5_000_250, 43), INTERVAL)
    flagged = _reading(9900, "NEW-2", 12, 0)
    track2, intervals, _ = advance_reading(track, flagged, INTERVAL, exchanged=True)
    assert [(i.import_wh, i.export_wh) for i in intervals] == [(0, 0)]
    _, intervals, _ = advance_reading(track2, _reading(10800, "NEW-2", 262, 0), INTERVAL,
                                      exchanged=True)  # a repeated flag (a crash) is harmless
    assert [(i.import_wh, i.export_wh) for i in intervals] == [(250, 0)]
    with pytest.raises(RegisterError, match="meter exchange first"):
        advance_reading(track, flagged, INTERVAL, exchanged=False)
    with pytest.raises(RegisterError, match="backwards"):  # same serial, lower register
        advance_reading(track, _reading(9900, "OLD-1", 12), INTERVAL, exchanged=False)


async def test_settlement_books_a_flagged_exchange_as_zero_estimated_energy_not_an_error(
    tmp_path: Path,
) -> None:
    """The gateway keeps the meter's name, the new meter's registers start near zero: the interval
    ending at the flagged reading is unknown energy (0, ESTIMATED), the next is measured again."""
    from meterchain.backend.settlement.netting import Quality

    from tests.support.settlement import COMMUNITY, T0, close_site, open_site

    site = await open_site(tmp_path)
    try:
        await site.member("mp-1", "gw-a", "M1")
        await site.send(site.message("gw-a", "M1", T0, 5_000_000, 40_000))
        await site.send(site.message("gw-a", "M1", T0 + 900, 5_000_400, 40_000))
        await site.send(site.message("gw-a", "M1", T0 + 1800, 12, 0,
                                     status=StatusFlag.METER_EXCHANGED))
        await site.send(site.message("gw-a", "M1", T0 + 2700, 312, 5))
        report = await site.runner.settle_community(COMMUNITY, T0 + 2700)
        assert [start for start, _, _ in report.settled] == [T0, T0 + 900, T0 + 1800]
        assert await site.tables.exclusions(COMMUNITY) == []
        lines = {start: line for start, _, line in
                 await site.tables.lines(COMMUNITY, T0, T0 + 2700, member="mp-1")}
        assert (lines[T0]["import_wh"], lines[T0]["quality"]) == (400, Quality.MEASURED)
        assert (lines[T0 + 900]["import_wh"], lines[T0 + 900]["export_wh"]) == (0, 0)
        assert lines[T0 + 900]["quality"] == Quality.ESTIMATED
        assert (lines[T0 + 1800]["import_wh"], lines[T0 + 1800]["export_wh"]) == (300, 5)
    finally:
        await close_site(site)


async def test_without_the_flag_a_register_drop_is_excluded_never_negative(tmp_path: Path) -> None:
    from tests.support.settlement import COMMUNITY, T0, close_site, open_site

    site = await open_site(tmp_path)
    try:
        await site.member("mp-1", "gw-a", "M1")
        await site.send(site.message("gw-a", "M1", T0, 5_000_000, 40_000))
        await site.send(site.message("gw-a", "M1", T0 + 900, 12, 0))
        await site.runner.settle_community(COMMUNITY, T0 + 900)
        [excluded] = await site.tables.exclusions(COMMUNITY)
        assert (excluded.device, excluded.reason) == ("gw-a", "register")
        assert "backwards" in excluded.detail
        lines = await site.tables.lines(COMMUNITY, T0, T0 + 900)
        assert all(line["import_wh"] >= 0 and line["export_wh"] >= 0 for _, _, line in lines)
    finally:
        await close_site(site)
