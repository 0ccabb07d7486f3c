"""Time for the agent: an injected clock (tests run 1-second intervals) and the gateway's sync status."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from typing import Protocol

from meterchain.contract.reading import ClockSync

# adjtimex(2) returns the clock state; TIME_ERROR means the kernel clock is not synchronised
# (no NTP/PTP daemon has disciplined it). Linux only; elsewhere the status is unknown.
_TIME_ERROR = 5
_TIMEX_SIZE = 512  # larger than struct timex on every Linux ABI; zeroed = read-only query


class Clock(Protocol):
    """UTC wall-clock seconds, and a way to wait until a given one."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class SystemClock:
    """The gateway's real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        # asyncio sleeps on the monotonic clock; re-check the wall clock after waking so a step
        # of the system time (NTP) neither skips nor repeats an interval boundary.
        while (remaining := deadline - time.time()) > 0:
            await asyncio.sleep(min(remaining, 60.0))


def kernel_clock_sync() -> ClockSync:
    """SYNCED when the kernel says its clock is disciplined, UNSYNCED when it says it is not.

    The SDM meters we read have no clock of their own: interval boundaries are the gateway's, so
    the gateway's sync state is what a reading's ``clock`` field reports.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        state = libc.adjtimex(ctypes.create_string_buffer(_TIMEX_SIZE))
    except (OSError, AttributeError):
        return ClockSync.UNKNOWN
    if state < 0:
        return ClockSync.UNKNOWN
    return ClockSync.UNSYNCED if state == _TIME_ERROR else ClockSync.SYNCED
