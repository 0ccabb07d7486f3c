"""Time for the agent: an injected clock (tests run 1-second intervals) and the gateway's sync status."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
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


class ClockVerdict(StrEnum):
    """What the agent knows of its own clock (docs/agent.md, "Clock")."""

    UNKNOWN = "unknown"  # nothing to compare with yet
    OK = "ok"  # within the tolerance of every reference it has
    AHEAD = "ahead"  # surely ahead by more than the tolerance: its intervals lie in the future
    BEHIND = "behind"  # surely behind by more than the tolerance: its intervals lie in the past


@dataclass(frozen=True, slots=True)
class _Bound:
    """At local time ``local`` (monotonic ``mono``), local - true time lay in [low, high]."""

    low: float
    high: float
    local: float
    mono: float


class ClockJudge:
    """Judges the gateway clock against references it can trust, pure apart from ``monotonic``.

    - **The backend's time in a verified ack** (contract/control.py, ``time``): the backend signed
      it between our publish of a reading the ack covers for the first time (local ``sent``) and
      its arrival (local ``received``), so local - true lies in [sent - time, received - time],
      whatever the delays. An ack covering nothing new (the retained one, maybe hours old) only
      gives the upper end.
    - **A DLMS meter's clock**: drift = meter - gateway, ± its uncertainty.

    The latest bound of each source is kept together with the monotonic clock at that moment: a
    step of the gateway clock since (NTP, an operator, a test's injected clock) moves the bound
    by the same amount, so a correction is seen at once, without waiting for the next ack. The
    verdict is AHEAD or BEHIND only when a bound proves it beyond ``tolerance``; acks win over
    meters (a meter's clock can be wrong too). A lower end older than ``expiry`` seconds is
    dropped: an agent that signs nothing gets no fresh bound, so a wrong one must not stop it
    for good (if the clock is still ahead, the next reading proves it again). Without ``monotonic`` it is blind (always
    UNKNOWN): a clock that is not the gateway's (the demo's time lapse, a test's accelerated
    clock) cannot tell a step from its own pace.
    """

    SOURCES = ("ack", "meter")

    def __init__(self, tolerance: float = 120.0,
                 monotonic: Callable[[], float] | None = time.monotonic,
                 expiry: float = 600.0) -> None:
        self.tolerance = tolerance
        self.expiry = expiry
        self.monotonic = monotonic
        self._bounds: dict[str, _Bound] = {}

    def observe_ack(self, backend_time: float, received: float, sent: float | None) -> None:
        """A verified ack signed at ``backend_time``; ``sent``: the latest local publish time of
        a reading it committed for the first time (None: it committed nothing new)."""
        if self.monotonic is None:
            return
        low = -math.inf if sent is None else sent - backend_time
        high = received - backend_time
        previous = self._bounds.get("ack")
        if sent is None and previous is not None:
            # Only an upper end: keep the previous lower end where it still fits.
            prev = self._shifted(previous, received)
            low = prev[0] if prev[0] <= high else -math.inf
        self._bounds["ack"] = _Bound(low, max(low, high), received, self.monotonic())

    def observe_meter(self, drift: float, uncertainty: float, local: float) -> None:
        """A DLMS meter's clock check: drift = meter - gateway, ± ``uncertainty`` seconds."""
        if self.monotonic is None:
            return
        self._bounds["meter"] = _Bound(-drift - uncertainty, -drift + uncertainty, local,
                                       self.monotonic())

    def _shifted(self, bound: _Bound, local: float) -> tuple[float, float]:
        assert self.monotonic is not None  # no bounds without it
        elapsed = self.monotonic() - bound.mono
        step = (local - bound.local) - elapsed
        low = -math.inf if elapsed > self.expiry else bound.low + step
        return low, bound.high + step

    def offset(self, local: float) -> tuple[float, float] | None:
        """Where local - true time lies now, by the best source (None: no reference yet)."""
        for source in self.SOURCES:
            bound = self._bounds.get(source)
            if bound is not None:
                return self._shifted(bound, local)
        return None

    def verdict(self, local: float) -> ClockVerdict:
        span = self.offset(local)
        if span is None:
            return ClockVerdict.UNKNOWN
        low, high = span
        if low > self.tolerance:
            return ClockVerdict.AHEAD
        if high < -self.tolerance:
            return ClockVerdict.BEHIND
        return ClockVerdict.OK
