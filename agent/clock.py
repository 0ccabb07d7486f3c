"""Time for the agent: an injected clock (tests run 1-second intervals) and the gateway's sync status."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable
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


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, looked up once: find_library runs ldconfig (a subprocess) on every call."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def kernel_clock_sync() -> ClockSync:
    """SYNCED when the kernel says its clock is disciplined, UNSYNCED when it says it is not.

    The SDM meters we read have no clock of their own: interval boundaries are the gateway's, so
    the gateway's sync state is what a reading's ``clock`` field reports.
    """
    try:
        libc = _libc()
        state = libc.adjtimex(ctypes.create_string_buffer(_TIMEX_SIZE))
    except (OSError, AttributeError):
        return ClockSync.UNKNOWN
    if state < 0:
        return ClockSync.UNKNOWN
    return ClockSync.UNSYNCED if state == _TIME_ERROR else ClockSync.SYNCED


class TimeLapseClock:
    """A clock that starts in the past, moves only when told to, and becomes the system clock
    when it reaches the present.

    The demo's history: emulated meters and agents run on this clock from weeks ago, and a driver
    advances it one interval at a time as fast as the pipe takes the readings
    (:meth:`advance_to`). Time never passes the wall clock, so nothing it dates is in the future;
    once the next step would, the clock is live and sleeps in real time like :class:`SystemClock`.
    """

    def __init__(self, start: float, wall: Callable[[], float] = time.time) -> None:
        self._virtual = float(start)
        self._wall = wall
        self.live = False
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self._wall() if self.live else self._virtual

    def advance_to(self, t: float) -> bool:
        """Move to ``t`` and wake the sleepers it reaches; False (and live from now on) once ``t``
        is later than the wall clock."""
        if not self.live:
            if t > self._wall():
                self.live = True
            else:
                self._virtual = max(self._virtual, float(t))
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
        return not self.live

    async def sleep_until(self, deadline: float) -> None:
        while not self.live and self._virtual < deadline:
            await self._moved.wait()
        if self.live:
            await SystemClock().sleep_until(deadline)
