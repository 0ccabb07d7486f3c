"""Interval energy from cumulative registers: differences, gaps, exchanges, and refusals."""

from __future__ import annotations

import hashlib

import pytest
from meterchain.backend.settlement.netting import (
    MeterExchange,
    Quality,
    RegisterError,
    RegisterReading,
    advance,
    apply_exchange,
    start_track,
)

Q = 900


def leaf(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def reading(t: int, imp: int, exp: int = 0, serial: str = "SN1", q: Quality = Quality.MEASURED):
    return RegisterReading("m1", t, serial, imp, exp, q, leaf(t))


def test_consecutive_readings_give_their_difference_and_both_leaves() -> None:
    track = start_track(reading(0, 1000, 50), Q)
    track, rows, starts = advance(track, reading(Q, 1250, 60, q=Quality.ESTIMATED), Q)
    assert starts == [0]
    assert (rows[0].import_wh, rows[0].export_wh, rows[0].quality) == (250, 10, Quality.ESTIMATED)
    assert rows[0].leaf_hashes == tuple(sorted([leaf(0), leaf(Q)]))


def test_a_gap_is_spread_evenly_and_flagged_substituted() -> None:
    track = start_track(reading(0, 0), Q)
    track, rows, starts = advance(track, reading(4 * Q, 1002, 3), Q)
    assert starts == [0, Q, 2 * Q, 3 * Q]
    assert sorted(r.import_wh for r in rows) == [250, 250, 251, 251]
    assert sum(r.export_wh for r in rows) == 3
    assert all(r.quality is Quality.SUBSTITUTED for r in rows)
    assert track.timestamp == 4 * Q and track.import_register_wh == 1002


def test_redelivery_is_a_no_op_and_conflicts_are_refused() -> None:
    track = start_track(reading(0, 10), Q)
    track, _, _ = advance(track, reading(Q, 20), Q)
    same, rows, _ = advance(track, reading(Q, 20), Q)
    assert same == track and rows == []
    with pytest.raises(RegisterError) as err:
        advance(track, reading(Q, 21), Q)
    assert err.value.context["timestamp"] == Q


def test_registers_never_run_backwards() -> None:
    track = start_track(reading(0, 500), Q)
    with pytest.raises(RegisterError, match="backwards"):
        advance(track, reading(Q, 499), Q)


def test_meter_exchange_keeps_energy_exact_and_never_negative() -> None:
    track = start_track(reading(0, 90_000), Q)
    track = apply_exchange(track, MeterExchange("m1", 600, "SN1", 90_120, 0, "SN2", 5, 0))
    with pytest.raises(RegisterError, match="another meter"):
        advance(track, reading(Q, 200), Q)  # old serial after the exchange
    track, rows, _ = advance(track, reading(Q, 35, serial="SN2"), Q)
    assert rows[0].import_wh == 120 + 30
    track, rows, _ = advance(track, reading(2 * Q, 40, serial="SN2"), Q)
    assert rows[0].import_wh == 5  # the carry is used once


def test_unrecorded_exchange_and_bad_exchanges_are_refused() -> None:
    track = start_track(reading(0, 90_000), Q)
    with pytest.raises(RegisterError, match="record the meter exchange"):
        advance(track, reading(Q, 3, serial="SN9"), Q)
    with pytest.raises(RegisterError, match="final registers"):
        apply_exchange(track, MeterExchange("m1", 600, "SN1", 89_000, 0, "SN2", 0, 0))
    with pytest.raises(RegisterError, match="current meter"):
        apply_exchange(track, MeterExchange("m1", 600, "SN7", 95_000, 0, "SN2", 0, 0))


@pytest.mark.parametrize("bad", [450, -900, "900", 900.0, True])
def test_off_grid_or_mistyped_timestamps_are_typed_errors(bad: object) -> None:
    track = start_track(reading(0, 0), Q)
    with pytest.raises(RegisterError):
        advance(track, RegisterReading("m1", bad, "SN1", 5, 0), Q)  # type: ignore[arg-type]


def test_energy_above_the_bound_is_refused() -> None:
    track = start_track(reading(0, 0), Q)
    with pytest.raises(RegisterError, match="bound"):
        advance(track, reading(Q, 10_000_001), Q)
