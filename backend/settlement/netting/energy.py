"""Interval energy from cumulative registers, as a pure state machine per member.

A reading is a pair of cumulative registers (import, export) at an interval boundary. The energy of
an interval is the difference of the readings at its two ends. When readings are missing, the next
reading spans the gap: its energy is spread evenly over the missing intervals (largest remainder,
ties by the hash of (interval, member)) and flagged SUBSTITUTED, and the caller re-settles those
intervals (as delta lines if they were settled at the deadline). Registers never run backwards: a
lower register is an error, never negative energy. A meter exchange is an explicit event carrying the
old meter's final and the new meter's initial registers, so the energy across it stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import RegisterError
from .model import MAX_MEMBER_WH, MemberInterval, Quality, check_member_id
from .rounding import largest_remainder

MAX_REGISTER_WH = 2**62


@dataclass(frozen=True)
class RegisterReading:
    member_id: str
    timestamp: int  # an interval boundary, UTC seconds
    meter_serial: str
    import_register_wh: int
    export_register_wh: int
    quality: Quality = Quality.MEASURED
    leaf_hash: bytes | None = None  # the reading's leaf in the log, for the settlement digest


@dataclass(frozen=True)
class MeterExchange:
    member_id: str
    timestamp: int
    old_serial: str
    old_final_import_wh: int
    old_final_export_wh: int
    new_serial: str
    new_initial_import_wh: int
    new_initial_export_wh: int


@dataclass(frozen=True)
class MeterTrack:
    """What a member's next reading is measured against."""

    member_id: str
    meter_serial: str
    timestamp: int
    import_register_wh: int
    export_register_wh: int
    leaf_hash: bytes | None
    carry_import_wh: int = 0  # energy the old meter counted after its last reading (exchange)
    carry_export_wh: int = 0


def _check_register(name: str, value: object, member_id: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REGISTER_WH:
        raise RegisterError(f"{name} must be an integer in [0, 2^62]", member_id=member_id,
                            value=value)
    return value


def start_track(reading: RegisterReading, interval_seconds: int) -> MeterTrack:
    """The first reading of a member only sets the baseline; it yields no energy."""
    check_member_id(reading.member_id)
    _check_boundary(reading.timestamp, interval_seconds, reading.member_id)
    return MeterTrack(
        reading.member_id, reading.meter_serial, reading.timestamp,
        _check_register("import register", reading.import_register_wh, reading.member_id),
        _check_register("export register", reading.export_register_wh, reading.member_id),
        reading.leaf_hash,
    )


def _check_boundary(timestamp: object, interval_seconds: int, member_id: str) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0 \
            or timestamp % interval_seconds:
        raise RegisterError("reading is not on an interval boundary", member_id=member_id,
                            timestamp=timestamp, interval_seconds=interval_seconds)


def apply_exchange(track: MeterTrack, exchange: MeterExchange) -> MeterTrack:
    """Close the old meter at its final registers and continue from the new meter's initial ones."""
    if exchange.member_id != track.member_id or exchange.old_serial != track.meter_serial:
        raise RegisterError("meter exchange does not match the member's current meter",
                            member_id=track.member_id, current=track.meter_serial,
                            old_serial=exchange.old_serial)
    if exchange.timestamp < track.timestamp:
        raise RegisterError("meter exchange before the last reading of the old meter",
                            member_id=track.member_id, timestamp=exchange.timestamp,
                            last_reading=track.timestamp)
    final_import = _check_register("old final import", exchange.old_final_import_wh,
                                   track.member_id)
    final_export = _check_register("old final export", exchange.old_final_export_wh,
                                   track.member_id)
    if final_import < track.import_register_wh or final_export < track.export_register_wh:
        raise RegisterError("old meter's final registers are below its last reading",
                            member_id=track.member_id, final_import=final_import,
                            last_import=track.import_register_wh, final_export=final_export,
                            last_export=track.export_register_wh)
    return replace(
        track,
        meter_serial=exchange.new_serial,
        import_register_wh=_check_register("new initial import", exchange.new_initial_import_wh,
                                           track.member_id),
        export_register_wh=_check_register("new initial export", exchange.new_initial_export_wh,
                                           track.member_id),
        carry_import_wh=track.carry_import_wh + final_import - track.import_register_wh,
        carry_export_wh=track.carry_export_wh + final_export - track.export_register_wh,
    )


def advance(
    track: MeterTrack, reading: RegisterReading, interval_seconds: int,
) -> tuple[MeterTrack, list[MemberInterval], list[int]]:
    """Consume the next reading: (new track, member intervals, their interval starts).

    A repeat of the last reading (same time, same registers) is a no-op, so redelivery is safe.
    """
    member = track.member_id
    if reading.member_id != member:
        raise RegisterError("reading of another member", member_id=member,
                            reading_member=reading.member_id)
    _check_boundary(reading.timestamp, interval_seconds, member)
    imp = _check_register("import register", reading.import_register_wh, member)
    exp = _check_register("export register", reading.export_register_wh, member)
    if reading.meter_serial != track.meter_serial:
        raise RegisterError("reading from another meter: record the meter exchange first",
                            member_id=member, expected=track.meter_serial,
                            got=reading.meter_serial)
    if reading.timestamp <= track.timestamp:
        if (reading.timestamp == track.timestamp and imp == track.import_register_wh
                and exp == track.export_register_wh and not track.carry_import_wh
                and not track.carry_export_wh):
            return track, [], []
        raise RegisterError("reading is not newer than the last one", member_id=member,
                            timestamp=reading.timestamp, last=track.timestamp)
    import_wh = imp - track.import_register_wh + track.carry_import_wh
    export_wh = exp - track.export_register_wh + track.carry_export_wh
    if imp < track.import_register_wh or exp < track.export_register_wh:
        raise RegisterError("register went backwards without a recorded meter exchange",
                            member_id=member, timestamp=reading.timestamp,
                            import_register=imp, last_import=track.import_register_wh,
                            export_register=exp, last_export=track.export_register_wh)
    count = (reading.timestamp - track.timestamp) // interval_seconds
    starts = [track.timestamp + k * interval_seconds for k in range(count)]
    if max(import_wh, export_wh) > MAX_MEMBER_WH * count:
        raise RegisterError("energy above the per-interval bound", member_id=member,
                            import_wh=import_wh, export_wh=export_wh, intervals=count)
    leaves = tuple(sorted(x for x in {track.leaf_hash, reading.leaf_hash} if x is not None))
    if count == 1:
        quality = Quality(reading.quality)
        imports, exports = [import_wh], [export_wh]
    else:
        quality = Quality.SUBSTITUTED
        even = np.ones(count, np.int64)
        ids = [member] * count
        imports = largest_remainder(import_wh, even, starts, ids).tolist()
        exports = largest_remainder(export_wh, even, starts, ids).tolist()
    intervals = [MemberInterval(member, i, e, quality, leaves) for i, e in zip(imports, exports, strict=True)]
    new_track = MeterTrack(member, track.meter_serial, reading.timestamp, imp, exp,
                           reading.leaf_hash)
    return new_track, intervals, starts
