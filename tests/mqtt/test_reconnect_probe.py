"""The reconnect loop connects as soon as a broker that did not answer answers again (issue 20):
a long outage no longer costs up to the backoff's maximum after the broker is back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from meterchain.mqtt import Backoff, BrokerUrl, Connection, Failure, stay_connected
from meterchain.mqtt._loop import _wait, answers_again
from meterchain.mqtt.broker import find_mosquitto, free_port, start_mosquitto

MOSQUITTO = find_mosquitto()


class Listener:
    """A TCP port that accepts (and counts) connections while open."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def listener(port: int) -> AsyncIterator[Listener]:
    served = Listener(port)
    try:
        yield served
    finally:
        await served.close()


async def forever(seconds: float) -> None:
    """A backoff sleep that never ends on its own: only the probe can end the wait."""
    await asyncio.Event().wait()


async def test_the_wait_ends_when_a_refusing_port_accepts_again() -> None:
    port = free_port()
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{port}")
    wait = asyncio.create_task(_wait(url, 30.0, forever, 0.1, random.Random(1)))
    async with listener(port) as served:
        await asyncio.sleep(0.3)  # a few refused probes
        assert not wait.done()
        await served.open()
        assert await asyncio.wait_for(wait, 10) is True
        assert served.accepted == 1  # one probe, nothing sent


async def test_a_broker_that_answers_gets_the_full_backoff_and_one_probe() -> None:
    """Its failure was MQTT's (a refused login, say): probing it again is no news."""
    port = free_port()
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{port}")
    slept = asyncio.Event()
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        await slept.wait()

    async with listener(port) as served:
        await served.open()
        wait = asyncio.create_task(_wait(url, 7.0, sleep, 0.05, random.Random(2)))
        while served.accepted == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # six probe periods: none comes
        assert not wait.done() and served.accepted == 1 and asked == [7.0]
        slept.set()
        assert await asyncio.wait_for(wait, 10) is False


async def test_probing_off_is_a_plain_sleep() -> None:
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}")
    assert await _wait(url, 3.0, sleep, 0.0, random.Random(3)) is False
    assert asked == [3.0]
    with pytest.raises(ValueError, match="probe"):
        Backoff(probe=-1)


async def test_answers_again_is_false_for_a_port_that_answers_at_once() -> None:
    port = free_port()
    async with listener(port) as served:
        await served.open()
        assert await answers_again(BrokerUrl.parse(f"mqtt://127.0.0.1:{port}"), 1.0,
                                   random.Random(4)) is False


@pytest.mark.skipif(MOSQUITTO is None, reason="needs Mosquitto")
async def test_back_within_seconds_of_a_restart_however_long_the_backoff(tmp_path: Path) -> None:
    """A backoff whose first wait is 10-20 s: without the probe the client would be back no
    sooner than 10 s after the broker went down, whenever it came back."""
    assert MOSQUITTO is not None
    port = free_port()
    running = await start_mosquitto(MOSQUITTO, port=port, workdir=tmp_path / "a")
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{port}")
    connected: asyncio.Queue[float] = asyncio.Queue()
    failures: list[Failure] = []

    async def session(connection: Connection) -> None:
        connected.put_nowait(time.monotonic())
        async for _ in connection.messages():
            pass

    loop = asyncio.create_task(stay_connected(
        url, session, name="probe", backoff=Backoff(initial=20.0, maximum=60.0, probe=0.5),
        on_failure=failures.append, client_id="probe"))
    try:
        await asyncio.wait_for(connected.get(), 10)
        await running.stop()
        lost = time.monotonic()
        await asyncio.sleep(1.0)
        running = await start_mosquitto(MOSQUITTO, port=port, workdir=tmp_path / "b")
        back = await asyncio.wait_for(connected.get(), 9)
        assert back - lost < 10.0 <= failures[0].delay
        assert failures[0].was_connected
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await running.stop()


async def test_a_probe_cancelled_as_its_connection_is_refused_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelling the probe in the loop turn its connection attempt fails in must end it.

    asyncio.wait_for (Python 3.11) returned the attempt's OSError instead of the cancellation
    when both came in one turn; the probe took that for a refusal and went on probing, so a
    gateway stopped while its broker was down hung until the broker came back (seen under load:
    the agent's task did not stop within 30 s of its cancellation).
    """
    probe: asyncio.Task[bool] | None = None
    attempts = 0

    async def refused(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            assert probe is not None
            probe.cancel()  # arrives in the same turn as the refusal below
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(asyncio, "open_connection", refused)
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}")
    probe = asyncio.create_task(answers_again(url, 0.02, random.Random(3)))
    await asyncio.wait({probe}, timeout=30)
    assert probe.cancelled(), f"the probe went on after its cancellation ({attempts} attempts)"
    assert attempts == 1
