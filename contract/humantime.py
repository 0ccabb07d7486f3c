"""Times for people, and for machines: one place that turns Unix seconds into text.

People read local time with its zone ("Mon 7 Dec 2026 01:02:03 CET"); machine formats carry
ISO 8601 with an offset. An interval is shown with its start and its end, at a precision that
keeps them apart (a 10-second reading never reads "21:49 – 21:49"). Pure code: no I/O, and the
zone is the caller's choice (``None``: this machine's local zone).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

Zone = dt.tzinfo | str | None


def _tz(zone: Zone) -> dt.tzinfo | None:
    return ZoneInfo(zone) if isinstance(zone, str) else zone


def _local(ts: float, zone: Zone) -> dt.datetime:
    tz = _tz(zone)
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.astimezone(tz) if tz is not None else when.astimezone()


def iso(ts: float | None, zone: Zone = dt.UTC) -> str | None:
    """ISO 8601 with offset, to the second (machine formats); None stays None."""
    if ts is None:
        return None
    return _local(int(ts), zone).isoformat(timespec="seconds")


def human_time(ts: float | None, zone: Zone = None, *, seconds: bool = True, never: str = "never") -> str:
    """Local date and time with zone, e.g. ``Mon 7 Dec 2026 01:02:03 CET``."""
    if ts is None:
        return never
    local = _local(int(ts), zone)
    clock = f"{local:%H:%M:%S}" if seconds else f"{local:%H:%M}"
    return f"{local:%a} {local.day} {local:%b %Y} {clock} {local:%Z}"


def human_interval(start: float, end: float, zone: Zone = None) -> str:
    """``[start, end)`` with both ends readable: the date once if both fall on one day, seconds
    when minutes alone would not tell start from end."""
    a, b = _local(int(start), zone), _local(int(end), zone)
    seconds = a.second != 0 or b.second != 0
    pattern = "%H:%M:%S" if seconds else "%H:%M"
    head = f"{a:%a} {a.day} {a:%b %Y} {a.strftime(pattern)}"
    if a.date() == b.date():
        return f"{head} – {b.strftime(pattern)} {b:%Z}"
    return f"{head} {a:%Z} – {b:%a} {b.day} {b:%b %Y} {b.strftime(pattern)} {b:%Z}"


def human_duration(seconds: float | None, *, unknown: str = "unknown") -> str:
    """A span in the largest sensible units: ``45 s``, ``12 min 5 s``, ``3 h 20 min``, ``2 d 4 h``."""
    if seconds is None:
        return unknown
    sign, s = ("-" if seconds < 0 else ""), abs(int(seconds))
    if s < 60:
        return f"{sign}{s} s"
    if s < 3600:
        return f"{sign}{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"{sign}{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{sign}{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def human_ago(ts: float | None, now: float, zone: Zone = None, *, never: str = "never") -> str:
    """``Mon 7 Dec 2026 01:02:03 CET (5 min ago)``."""
    if ts is None:
        return never
    delta = int(now) - int(ts)
    rel = f"{human_duration(delta)} ago" if delta >= 0 else f"in {human_duration(-delta)}"
    return f"{human_time(ts, zone)} ({rel})"
