"""Local calendar periods as UTC interval ranges: a DST day has 92 or 100 quarter hours.

Pure apart from the system's tz database (zoneinfo); the engine itself only sees UTC seconds.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InputError


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError("unknown time zone", zone=name) from exc


def _utc_seconds(day: dt.date, zone: ZoneInfo) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def local_day_bounds(day: dt.date, zone: str) -> tuple[int, int]:
    """[start, end) in UTC seconds of a local calendar day (local midnight to local midnight)."""
    tz = _zone(zone)
    return _utc_seconds(day, tz), _utc_seconds(day + dt.timedelta(days=1), tz)


def local_month_bounds(year: int, month: int, zone: str) -> tuple[int, int]:
    """[start, end) in UTC seconds of a local calendar month, the usual bill period."""
    tz = _zone(zone)
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    return _utc_seconds(dt.date(year, month, 1), tz), _utc_seconds(nxt, tz)


def interval_starts(start: int, end: int, interval_seconds: int) -> range:
    """The interval starts of [start, end); both ends must be on the interval grid."""
    if start % interval_seconds or end % interval_seconds:
        raise InputError("period not aligned to intervals", start=start, end=end,
                         interval_seconds=interval_seconds)
    return range(start, end, interval_seconds)
