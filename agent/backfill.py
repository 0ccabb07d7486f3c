"""Which load-profile intervals to fetch next, and how far a meter's clock may be trusted (pure).

A meter with a load profile (DLMS/COSEM) keeps its own history, so the agent never has to be
online at an interval's end: each cycle it fetches what it has not signed yet, by range. These
functions decide that range from the outbox's progress and the time, with no I/O, so the rules
(bounded batches, oldest first, nothing twice, nothing older than the configured horizon) are
tested directly.

Readings of one meter are signed in time order: the outbox keeps one high-water mark per meter
(``meter_progress.last_end``) and refuses anything not newer. So a backlog is drained oldest
first, in batches of at most ``batch`` intervals, one transaction each, back to back within a
cycle; the current interval is signed right after the backlog before it, never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterchain.contract.reading import MAX_INTERVAL_SECONDS, ClockSync


@dataclass(frozen=True, slots=True)
class FetchWindow:
    """Capture times ``first`` … ``last`` (inclusive, UTC, aligned to the period) to read.

    ``more``: intervals after ``last`` are due too (fetch again after this batch).
    ``lost``: missing intervals older than the horizon, given up (the meter may not hold them).
    """

    first: int
    last: int
    more: bool
    lost: int = 0

    def count(self, period: int) -> int:
        return (self.last - self.first) // period + 1


def latest_capture(now: float, period: int) -> int:
    """The newest capture time a meter on time has written at ``now``."""
    return int(now) // period * period


def plan_fetch(
    *,
    last_end: int | None,
    scanned_to: int | None,
    now: float,
    period: int,
    horizon: int,
    batch: int,
) -> FetchWindow | None:
    """The next range of capture times to fetch, or None when nothing is due.

    ``last_end``: the newest interval end already signed for this meter (the outbox's progress);
    ``scanned_to``: a capture time up to which the meter was already asked and had nothing more
    (a gap: the meter was off), so an empty stretch is not fetched forever; ``horizon``: seconds
    of history to look back at most (also on a first start); ``batch``: intervals per fetch.
    """
    if period <= 0 or MAX_INTERVAL_SECONDS % period:
        raise ValueError(f"capture period {period} s must divide a day")
    if batch < 1 or horizon < 0:
        raise ValueError("batch must be >= 1 and horizon >= 0")
    latest = latest_capture(now, period)
    oldest = latest - horizon // period * period
    known = max((x for x in (last_end, scanned_to) if x is not None), default=None)
    lost = 0 if known is None else max(0, (oldest - period - known) // period)
    done = oldest - period if known is None else max(known, oldest - period)
    first = -(-(done + 1) // period) * period  # the first aligned capture after ``done``
    if first > latest:
        return None
    last = min(latest, first + (batch - 1) * period)
    return FetchWindow(first, last, last < latest, lost)


def is_backfill(capture_end: int, now: float, period: int) -> bool:
    """An interval read after the cycle in which it was the newest: it comes from history."""
    return capture_end < latest_capture(now, period)


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """The meter's clock against the gateway's, measured around one clock read."""

    drift: float  # meter minus gateway, seconds, at the middle of the read
    uncertainty: float  # half the read's duration: the drift is known within ± this
    sync: ClockSync

    @property
    def drifted(self) -> bool:
        return self.sync is ClockSync.DRIFTED


def check_clock(
    meter_utc: int,
    *,
    asked_at: float,
    answered_at: float,
    threshold: int,
    gateway: ClockSync,
    meter_trustworthy: bool = True,
) -> ClockCheck:
    """Compare the meter's clock with the gateway's; DRIFTED only when surely beyond threshold.

    The meter's answer was true at some moment between asking and answering, so the drift is
    known within half that span (plus the clock's one-second resolution); a slow link must not
    raise false alarms. A gateway that is itself unsynchronised cannot judge: UNSYNCED. A meter
    that flags its own clock invalid or doubtful is DRIFTED whatever the numbers say.
    """
    middle = (asked_at + answered_at) / 2
    drift = meter_utc - middle
    uncertainty = max(answered_at - asked_at, 0.0) / 2 + 1.0
    if gateway is ClockSync.UNSYNCED:
        sync = ClockSync.UNSYNCED
    elif not meter_trustworthy or abs(drift) - uncertainty > threshold:
        sync = ClockSync.DRIFTED
    else:
        sync = ClockSync.SYNCED
    return ClockCheck(drift, uncertainty, sync)
