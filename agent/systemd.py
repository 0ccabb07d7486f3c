"""Tell systemd that the agent is up and still working (sd_notify), with no dependency.

deploy/gateway/meterchain-agent.service is ``Type=notify`` with ``WatchdogSec=``: systemd restarts
the agent when ``WATCHDOG=1`` stops arriving. The pings come from a task on the agent's event loop,
so a wedged loop stops them; and they are sent only while every poller makes progress (the Modbus
interval poller and each DLMS meter's profile poller, each its own counter), so a serial port that
hangs a read forever stops them too, even while the other pollers carry on. Outside systemd
(``NOTIFY_SOCKET`` unset) every call is a no-op, so the same code runs in tests, in a shell and under
the unit.

Protocol: one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named by ``NOTIFY_SOCKET``
(a leading ``@`` means Linux's abstract namespace); see sd_notify(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

Progress = int | Mapping[str, int]  # one counter, or one per poller by name

log = logging.getLogger(__name__)

_MAX_STATUS = 200  # systemctl status shows one line; keep the datagram small


def notify_message(
    *,
    ready: bool = False,
    watchdog: bool = False,
    stopping: bool = False,
    status: str | None = None,
) -> bytes:
    """The datagram for the given state changes (pure; sd_notify(3) field names)."""
    lines = []
    if ready:
        lines.append("READY=1")
    if stopping:
        lines.append("STOPPING=1")
    if watchdog:
        lines.append("WATCHDOG=1")
    if status is not None:
        # A newline would start a new assignment: the status must stay one line.
        flat = " ".join(status.split())[:_MAX_STATUS]
        lines.append(f"STATUS={flat}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def socket_address(value: str) -> str | bytes:
    """The address to send to: a path, or an abstract name (``@name`` -> ``b"\\0name"``)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None without a watchdog.

    ``WATCHDOG_PID`` names the process the watchdog is meant for; a child that inherited the
    environment must not ping on its parent's behalf.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2_000_000


class Notifier:
    """Sends sd_notify datagrams; never raises (the service must not die for its supervisor)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        value = env.get("NOTIFY_SOCKET", "")
        return cls(socket_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: bytes) -> bool:
        """Send one datagram; True if it went out, False when disabled or the socket failed."""
        if self.address is None or not message:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop: a full receive queue (10 datagrams by default)
                # drops this ping instead, and the next one goes out in time.
                sock.setblocking(False)
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:  # once: a broken socket would otherwise flood the log
                log.warning("event=sd_notify_failed address=%r error=%s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(notify_message(ready=True, status=status))

    def watchdog(self) -> bool:
        return self.send(notify_message(watchdog=True))

    def status(self, text: str) -> bool:
        return self.send(notify_message(status=text))

    def stopping(self) -> bool:
        return self.send(notify_message(stopping=True))


class ProgressWatch:
    """Healthy while every progress counter has moved within ``max_stall`` seconds (pure; time
    passed in).

    The agent's counters are its pollers' completed work, one per poller by name; a counter that
    stops moving makes the whole watch unhealthy, whatever the others do. ``max_stall`` must
    exceed one polling interval plus the slowest honest meter read, e.g. ``2 * interval + 120``.
    """

    def __init__(self, max_stall: float, now: float) -> None:
        if max_stall <= 0:
            raise ValueError(f"max_stall must be positive, got {max_stall}")
        self.max_stall = max_stall
        self.started = now
        self._values: dict[str, int] = {}
        self._changed: dict[str, float] = {}
        self._current: tuple[str, ...] = ()

    def observe(self, value: Progress, now: float) -> None:
        counters = {"": value} if isinstance(value, int) else value
        for name, count in counters.items():
            if self._values.get(name) != count or name not in self._changed:
                self._values[name] = count
                self._changed[name] = now
        self._current = tuple(counters)  # a poller that is gone no longer counts

    def stalled(self, now: float) -> list[str]:
        """The counters that have not moved for longer than ``max_stall``."""
        return [n for n in self._current if now - self._changed[n] > self.max_stall]

    def healthy(self, now: float) -> bool:
        if not self._current:
            return now - self.started <= self.max_stall
        return not self.stalled(now)

    def stalled_for(self, now: float) -> float:
        """How long the most stalled counter has not moved."""
        oldest = min((self._changed[n] for n in self._current), default=self.started)
        return max(0.0, now - oldest)


async def run_watchdog(
    notifier: Notifier,
    progress: Callable[[], Progress],
    *,
    max_stall: float,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ping the watchdog every ``interval`` seconds while every counter of ``progress()`` keeps
    moving; runs until cancelled. Returns at once when there is no watchdog (``interval`` None
    and none in the environment). Once stalled it stops pinging and reports why (and which
    poller) in STATUS, so systemd's restart is explained by ``systemctl status``."""
    interval = watchdog_interval() if interval is None else interval
    if interval is None or not notifier.enabled:
        return
    watch = ProgressWatch(max_stall, clock())
    reported_stall = False
    while True:
        now = clock()
        watch.observe(progress(), now)
        if watch.healthy(now):
            notifier.watchdog()
            reported_stall = False
        elif not reported_stall:
            stalled = int(watch.stalled_for(now))
            names = ", ".join(name for name in watch.stalled(now) if name)
            log.error("event=watchdog_stall stalled_seconds=%d pollers=%r action=stop_pinging",
                      stalled, names)
            notifier.status(f"stalled: no completed poll cycle for {stalled} s"
                            + (f" ({names})" if names else ""))
            reported_stall = True
        await asyncio.sleep(interval)
