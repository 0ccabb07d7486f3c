"""agent/systemd.py against a real AF_UNIX datagram socket, as systemd would listen on it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from meterchain.agent.systemd import (
    Notifier,
    ProgressWatch,
    notify_message,
    run_watchdog,
    socket_address,
    watchdog_interval,
)
from meterchain.bridge.dlms.serial_client import SerialTransport
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent import running, wait_until
from tests.support.dlms_site import site


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


def _received(sock: socket.socket) -> list[bytes]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2)


async def _arrived(sock: socket.socket, until: Callable[[list[bytes]], bool] | None = None,
                   timeout: float = 30) -> list[bytes]:
    """The datagrams received until ``until`` holds for them (by default: until one came).

    The watchdog task pings every few milliseconds when the machine keeps up; on a loaded one a
    tick can come much later, so the test waits for what it expects rather than a fixed time.
    """
    out: list[bytes] = []

    def done() -> bool:
        out.extend(_received(sock))
        return until(out) if until is not None else bool(out)

    await wait_until(done, timeout, "the watchdog's datagrams")
    return out


def test_messages_use_sd_notify_fields() -> None:
    assert notify_message(ready=True, status="polling 3 meters") == b"READY=1\nSTATUS=polling 3 meters\n"
    assert notify_message(watchdog=True) == b"WATCHDOG=1\n"
    assert notify_message(stopping=True) == b"STOPPING=1\n"
    assert notify_message() == b""
    # A newline in the status would smuggle in another assignment (e.g. READY=1).
    assert notify_message(status="a\nREADY=1") == b"STATUS=a READY=1\n"
    assert len(notify_message(status="x" * 5000)) < 220


def test_notifier_sends_to_the_socket_in_notify_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("up")
    assert notifier.watchdog()
    assert notifier.status("reading meters")
    assert notifier.stopping()
    assert [sock.recv(4096) for _ in range(4)] == [
        b"READY=1\nSTATUS=up\n",
        b"WATCHDOG=1\n",
        b"STATUS=reading meters\n",
        b"STOPPING=1\n",
    ]


def test_abstract_socket_names() -> None:
    name = f"meterchain-test-{os.getpid()}"
    assert socket_address("@" + name) == b"\0" + name.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(64) == b"WATCHDOG=1\n"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_a_full_socket_drops_the_ping_instead_of_blocking(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    sent = [notifier.watchdog() for _ in range(200)]  # nobody reads: the queue fills up
    assert sent[0] and not sent[-1]
    assert _received(sock)


def test_a_missing_socket_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    assert sum("sd_notify_failed" in r.getMessage() for r in caplog.records) == 1


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_progress_watch_turns_unhealthy_only_after_max_stall() -> None:
    watch = ProgressWatch(max_stall=100, now=0)
    watch.observe(0, now=0)
    assert watch.healthy(100)
    assert not watch.healthy(100.5)
    watch.observe(1, now=150)
    assert watch.healthy(240)
    watch.observe(1, now=240)  # the same count is no progress
    assert not watch.healthy(251)
    assert watch.stalled_for(251) == 101
    with pytest.raises(ValueError):
        ProgressWatch(max_stall=0, now=0)


async def test_run_watchdog_pings_while_progressing_and_stops_on_a_stall(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    now = [0.0]
    cycles = [0]
    task = asyncio.create_task(
        run_watchdog(
            Notifier(path), lambda: cycles[0], max_stall=10, interval=0.01, clock=lambda: now[0]
        )
    )
    try:
        for _ in range(5):  # progressing: one cycle every 5 s of (fake) time
            now[0] += 5
            cycles[0] += 1
            assert set(await _arrived(sock)) == {b"WATCHDOG=1\n"}
        now[0] += 11  # the poller hangs: no new cycle for longer than max_stall
        after_stall = await _arrived(sock, lambda got: any(m.startswith(b"STATUS=") for m in got))
        # At most the pings already in flight, then one explanation, then silence.
        assert after_stall[-1].startswith(b"STATUS=stalled: no completed poll cycle for 11 s")
        await asyncio.sleep(0.05)
        assert _received(sock) == []
        cycles[0] += 1  # it recovers before systemd acted: pings resume
        assert b"WATCHDOG=1\n" in await _arrived(sock)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_watchdog_returns_without_a_watchdog() -> None:
    await asyncio.wait_for(run_watchdog(Notifier(None), lambda: 0, max_stall=1, interval=1), 1)
    await asyncio.wait_for(run_watchdog(Notifier("/nonexistent"), lambda: 0, max_stall=1), 1)


def test_progress_watch_needs_every_named_counter_to_move() -> None:
    watch = ProgressWatch(max_stall=10, now=0)
    watch.observe({"modbus": 0, "dlms main": 0}, now=0)
    watch.observe({"modbus": 1, "dlms main": 1}, now=5)
    watch.observe({"modbus": 2, "dlms main": 1}, now=12)  # the DLMS poller has stopped
    assert watch.healthy(15) and watch.stalled(15) == []
    assert not watch.healthy(15.5) and watch.stalled(15.5) == ["dlms main"]
    assert watch.stalled_for(15.5) == 10.5
    watch.observe({"modbus": 3}, now=16)  # a poller that is gone no longer counts
    assert watch.healthy(16)


async def test_watchdog_stops_when_a_dlms_only_agents_serial_port_hangs(
    listener: tuple[socket.socket, str], tmp_path: Path, broker: RunningBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway with only a DLMS meter: its interval poller keeps cycling (no Modbus meters to
    read), so only the DLMS poller's own counter shows that its port hung."""
    sock, path = listener
    async with site(tmp_path, broker) as s:
        agent = s.agent()
        async with running(agent.run):
            await wait_until(lambda: bool(agent.profile_pollers), 60, "the DLMS poller")
            (dlms,) = agent.profile_pollers
            interval_poller = agent.poller
            assert interval_poller is not None and not agent.sources  # DLMS only
            assert set(agent.progress()) == {"modbus", "dlms main"}
            now = [0.0]
            watchdog = asyncio.create_task(run_watchdog(
                Notifier(path), agent.progress, max_stall=10, interval=0.05,
                clock=lambda: now[0]))

            async def advance(what: str, *counters: Callable[[], int],
                              quiet: bool = False) -> list[bytes]:
                """Wait for the counters to move (a second: accelerated time), then 4 s pass; what
                the watchdog sends next (``quiet``: once it reported a stall, the little it sends
                in 0.15 s)."""
                seen = [counter() for counter in counters]
                await wait_until(lambda: all(c() > n for c, n in zip(counters, seen, strict=True)),
                                 60, what)
                _received(sock)  # what was sent before this step
                now[0] += 4
                if quiet:
                    await asyncio.sleep(0.15)
                    return _received(sock)
                return await _arrived(sock)

            try:
                for _ in range(3):  # the meter answers: every poller progresses
                    # Both pollers: the DLMS one alone can move several times in a second
                    # (backfill batches), faster than the interval poller's cycle.
                    sent = await advance("a DLMS and an interval cycle", lambda: dlms.progress,
                                         lambda: interval_poller.cycles)
                    assert set(sent) == {b"WATCHDOG=1\n"}

                async def wedged(self: SerialTransport, timeout: float) -> bytes:
                    await asyncio.Event().wait()  # a driver that ignores its timeout
                    return b""

                monkeypatch.setattr(SerialTransport, "read", wedged)
                await advance("an interval cycle", lambda: interval_poller.cycles)
                hung_at = dlms.progress  # the cycle that was running may still have ended
                sent = []
                for _ in range(3):  # 12 s more: the interval poller moves, the DLMS one not
                    stalled = any(m.startswith(b"STATUS=stalled") for m in sent)
                    sent += await advance("an interval cycle", lambda: interval_poller.cycles,
                                          quiet=stalled)
                assert dlms.progress == hung_at
                assert sent[-1].startswith(b"STATUS=stalled: no completed poll cycle for ")
                assert sent[-1].endswith(b" s (dlms main)\n")
                await asyncio.sleep(0.15)
                assert _received(sock) == []  # silence: systemd restarts the agent
            finally:
                watchdog.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await watchdog
