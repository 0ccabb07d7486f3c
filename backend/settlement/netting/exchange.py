"""A reading flagged METER_EXCHANGED, turned into the engine's explicit exchange event.

The gateway flags the first reading of a new meter on a metering point (agent/exchange.py).
The old meter's final registers are those of its last reading (what it counted after that is not
known to anyone: its energy is 0 here, never negative); the new meter's initial registers are
those of its first reading. So the interval ending at the flagged reading has non-negative energy
and the following intervals are measured against the new meter. Without the flag a lower
register stays what it is in energy.py: an error, never negative energy.
"""

from __future__ import annotations

from .energy import MeterExchange, MeterTrack, RegisterReading, advance, apply_exchange
from .model import MemberInterval


def exchange_from_reading(track: MeterTrack, first_new: RegisterReading) -> MeterExchange:
    """The exchange event the flagged reading ``first_new`` stands for."""
    return MeterExchange(
        member_id=track.member_id, timestamp=first_new.timestamp,
        old_serial=track.meter_serial, old_final_import_wh=track.import_register_wh,
        old_final_export_wh=track.export_register_wh, new_serial=first_new.meter_serial,
        new_initial_import_wh=first_new.import_register_wh,
        new_initial_export_wh=first_new.export_register_wh,
    )


def advance_reading(
    track: MeterTrack, reading: RegisterReading, interval_seconds: int, *, exchanged: bool,
) -> tuple[MeterTrack, list[MemberInterval], list[int]]:
    """``advance`` for a reading as it arrives, honouring its METER_EXCHANGED flag.

    A repeated flag (same serial as the track's meter) is an ordinary reading.
    """
    if exchanged and reading.meter_serial != track.meter_serial:
        track = apply_exchange(track, exchange_from_reading(track, reading))
    return advance(track, reading, interval_seconds)
