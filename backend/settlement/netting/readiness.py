"""When an interval settles: as soon as every member's reading is in, or at the deadline.

At the deadline, members still without a reading are settled with zero energy and flagged MISSING;
their reading, when it arrives, re-settles the interval as delta lines (deltas.resettle).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from .model import IntervalInput, MemberInterval, Quality


class Readiness(enum.Enum):
    WAIT = "wait"
    COMPLETE = "complete"  # every expected member's reading is in
    DEADLINE = "deadline"  # settle with what is in; the rest are MISSING


def readiness(expected: Iterable[str], present: Iterable[str], *, interval_end: int,
              deadline_seconds: int, now: int) -> Readiness:
    """Decide whether an interval can settle now (time passed in: this module never reads a clock)."""
    if now < interval_end:
        return Readiness.WAIT
    if set(expected) <= set(present):
        return Readiness.COMPLETE
    return Readiness.DEADLINE if now >= interval_end + deadline_seconds else Readiness.WAIT


def with_missing(interval_start: int, members: Iterable[MemberInterval],
                 expected: Iterable[str]) -> IntervalInput:
    """The input to settle at the deadline: readings in, plus a zero MISSING row per absent member."""
    rows = list(members)
    present = {r.member_id for r in rows}
    rows += [MemberInterval(m, 0, 0, Quality.MISSING) for m in sorted(set(expected) - present)]
    return IntervalInput.from_members(interval_start, rows)
