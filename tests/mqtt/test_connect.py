"""connect and stay_connected against a real Mosquitto (and amqtt): the MQTT 5 -> 3.1.1 fallback,
asked again on every connect; persistent sessions; PUBACK refusals; reconnect timing after a broker
restart; the backoff reset. Faults are injected only at the transport seam (a TCP proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from meterchain.mqtt import (
    Backoff,
    BrokerUrl,
    Connection,
    Failure,
    MqttError,
    Protocol,
    ProtocolUnsupported,
    connect,
    stay_connected,
)
from meterchain.mqtt.broker import RunningBroker, find_mosquitto, free_port, start_embedded, start_mosquitto

MOSQUITTO = find_mosquitto()
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="needs Mosquitto")
#: A V5 CONNACK refusing the protocol: type 2, length 3, no session, 0x84 unsupported version.
CONNACK_UNSUPPORTED = b"\x20\x03\x00\x84\x00"


class Mqtt5Refuser:
    """A TCP proxy in front of a broker that answers an MQTT 5 CONNECT with 0x84 while
    ``refuse`` is set (a broker that speaks only 3.1.1), and relays everything else."""

    def __init__(self, upstream: RunningBroker) -> None:
        self.upstream = upstream
        self.refuse = True
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Mqtt5Refuser:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, login: str = "") -> BrokerUrl:
        return BrokerUrl.parse(f"mqtt://{login}127.0.0.1:{self.port}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(10)  # fixed header (short CONNECT), name, level
            level = head[8] if head[2:8] == b"\x00\x04MQTT" else head[9]
            if level == 5 and self.refuse:
                self.refused += 1
                writer.write(CONNACK_UNSUPPORTED)
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(self.upstream.host,
                                                                 self.upstream.port)
            up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[RunningBroker]:
    if MOSQUITTO is None:
        pytest.skip("needs Mosquitto")
    running = await start_mosquitto(MOSQUITTO, workdir=tmp_path / "mosquitto")
    try:
        yield running
    finally:
        await running.stop()


async def _roundtrip(connection: Connection, topic: str = "t/roundtrip") -> None:
    await connection.subscribe(topic, qos=1)
    assert await connection.publish(topic, b"ping") is None
    (message,) = await asyncio.wait_for(connection.receive(10), 5)
    assert (message.topic, message.payload) == (topic, b"ping")


async def test_mqtt5_first_then_311_when_refused_and_mqtt5_again_on_the_next_connect(
    mosquitto: RunningBroker,
) -> None:
    async with Mqtt5Refuser(mosquitto) as proxy:
        async with connect(proxy.url(), client_id="fallback") as connection:
            assert connection.protocol is Protocol.V311 and connection.client_id == "fallback"
            await _roundtrip(connection)
        assert proxy.refused == 1
        proxy.refuse = False  # the broker learned MQTT 5: never stuck on 3.1.1
        async with connect(proxy.url(), client_id="fallback") as connection:
            assert connection.protocol is Protocol.V5
            await _roundtrip(connection)
    async with connect(BrokerUrl.parse(mosquitto.url)) as direct:
        assert direct.protocol is Protocol.V5 and direct.client_id.startswith("meterchain-")


async def test_only_mqtt5_is_refused_by_a_311_broker_with_a_typed_error(
    mosquitto: RunningBroker,
) -> None:
    async with Mqtt5Refuser(mosquitto) as proxy:
        with pytest.raises(ProtocolUnsupported) as info:
            async with connect(proxy.url("worker:s3cret@"), protocols=(Protocol.V5,)):
                pass
        assert "s3cret" not in str(info.value) and str(proxy.url()) in str(info.value)
        async with connect(proxy.url(), protocols=(Protocol.V311,)) as connection:
            assert connection.protocol is Protocol.V311 and proxy.refused == 1


async def test_amqtt_never_answers_mqtt5_and_gets_311(tmp_path: Path) -> None:
    running = await start_embedded(workdir=tmp_path)
    try:
        url = BrokerUrl.parse(running.url)
        # amqtt checks an Argon2 password per connect: slow on a busy machine, hence 3 s.
        async with connect(url, timeout=3.0) as connection:
            assert connection.protocol is Protocol.V311
            await _roundtrip(connection)
        with pytest.raises(ProtocolUnsupported):  # answers 3.1.1 only: not an outage
            async with connect(url, protocols=(Protocol.V5,), timeout=3.0):
                pass
    finally:
        await running.stop()


async def test_a_broker_that_is_down_is_an_outage_not_a_fallback() -> None:
    url = BrokerUrl.parse(f"mqtt://gw:s3cret@127.0.0.1:{free_port()}")
    began = time.monotonic()
    with pytest.raises(MqttError) as info:
        async with connect(url, protocols=(Protocol.V5,), timeout=2.0):
            pass
    assert not isinstance(info.value, ProtocolUnsupported)
    assert time.monotonic() - began < 1.5 and "s3cret" not in str(info.value)


@needs_mosquitto
@pytest.mark.parametrize("protocol", [Protocol.V5, Protocol.V311])
async def test_a_persistent_session_keeps_what_arrived_while_away(
    tmp_path: Path, protocol: Protocol
) -> None:
    assert MOSQUITTO is not None
    running = await start_mosquitto(MOSQUITTO, workdir=tmp_path)
    url = BrokerUrl.parse(running.url)
    try:
        async with connect(url, client_id="keeper", protocols=(protocol,), persistent=True) as c:
            await c.subscribe("kept/#", qos=1)
        async with connect(url) as sender:
            await sender.publish("kept/1", b"while away", qos=1)
        async with connect(url, client_id="keeper", protocols=(protocol,), persistent=True) as c:
            (message,) = await asyncio.wait_for(c.receive(10), 5)
            assert message.payload == b"while away"
        async with connect(url, client_id="fresh", protocols=(protocol,)) as c:
            await c.subscribe("gone/#", qos=1)
        async with connect(url) as sender:
            await sender.publish("gone/1", b"lost", qos=1)
        async with connect(url, client_id="fresh", protocols=(protocol,)) as c:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.receive(10), 0.5)
    finally:
        await running.stop()


@needs_mosquitto
async def test_mqtt5_reports_a_refused_publish_311_cannot(tmp_path: Path) -> None:
    assert MOSQUITTO is not None
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite allowed/#\n")
    running = await start_mosquitto(MOSQUITTO, workdir=tmp_path,
                                    extra=[f"acl_file {acl}", f"user {getpass.getuser()}"])
    url = BrokerUrl.parse(running.url)
    try:
        async with connect(url) as connection:
            assert connection.protocol is Protocol.V5
            assert await connection.publish("allowed/x", b"1") is None
            refused = await connection.publish("denied/x", b"1")
            assert refused is not None and refused.is_failure and refused.value == 0x87
            assert str(refused) == "Not authorized"
        async with connect(url, protocols=(Protocol.V311,)) as connection:
            assert await connection.publish("denied/x", b"1") is None  # dropped silently
    finally:
        await running.stop()


@needs_mosquitto
async def test_reconnects_within_two_seconds_of_a_restarted_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert MOSQUITTO is not None
    port = free_port()
    running = await start_mosquitto(MOSQUITTO, port=port, workdir=tmp_path / "a")
    url = BrokerUrl.parse(f"mqtt://gw:s3cret@127.0.0.1:{port}")
    connected: asyncio.Queue[float] = asyncio.Queue()
    failures: list[Failure] = []

    async def session(connection: Connection) -> None:
        connected.put_nowait(time.monotonic())
        async for _ in connection.messages():
            pass

    caplog.set_level(logging.WARNING, logger="meterchain.mqtt")
    loop = asyncio.create_task(stay_connected(url, session, name="t", on_failure=failures.append,
                                              client_id="restart"))
    try:
        await asyncio.wait_for(connected.get(), 5)
        for round_ in range(2):
            await running.stop()
            await asyncio.sleep(1.5)  # down long enough for several attempts to fail
            running = await start_mosquitto(MOSQUITTO, port=port, workdir=tmp_path / f"b{round_}")
            answering = time.monotonic()
            back = await asyncio.wait_for(connected.get(), 10)
            assert back - answering < 2.0, f"reconnected {back - answering:.2f} s after the restart"
            lost = [f for f in failures if f.was_connected]
            assert len(lost) == round_ + 1 and lost[-1].attempt == 1  # counted from 0 again
            assert all(f.delay <= Backoff().cap(f.attempt - 1) for f in failures)
        assert "s3cret" not in caplog.text and "event=mqtt_retry client=t" in caplog.text
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await running.stop()


async def test_backoff_grows_while_down_and_resets_after_each_connection(
    broker: RunningBroker,
) -> None:
    delays: list[float] = []

    async def no_wait(seconds: float) -> None:
        delays.append(seconds)

    class Enough(Exception):
        pass

    def stop_after_five(failure: Failure) -> None:
        if failure.attempt == 5:
            raise Enough

    backoff = Backoff(initial=0.1, maximum=0.8)
    dead = BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(Enough):
        await stay_connected(dead, _never, name="t", backoff=backoff, sleep=no_wait,
                             on_failure=stop_after_five, protocols=(Protocol.V311,))
    assert [backoff.cap(i) / 2 <= d <= backoff.cap(i) for i, d in enumerate(delays)] == [True] * 4
    assert delays[3] > delays[0]

    failures: list[Failure] = []
    sessions = 0

    async def drops_twice(connection: Connection) -> str:
        nonlocal sessions
        sessions += 1
        if sessions <= 2:
            raise MqttError("dropped")  # a lost connection, after a successful connect
        return "done"

    result = await stay_connected(BrokerUrl.parse(broker.url), drops_twice, name="t",
                                  backoff=backoff, sleep=no_wait, on_failure=failures.append,
                                  protocols=(Protocol.V311,))
    assert result == "done" and [(f.attempt, f.was_connected) for f in failures] == [(1, True)] * 2


async def test_a_bug_in_the_session_propagates_unless_asked_to_retry(broker: RunningBroker) -> None:
    url = BrokerUrl.parse(broker.url)

    async def buggy(connection: Connection) -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await stay_connected(url, buggy, name="t", protocols=(Protocol.V311,))
    calls = 0

    async def flaky(connection: Connection) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("store hiccup")
        return calls

    async def no_wait(seconds: float) -> None:
        pass

    assert await stay_connected(url, flaky, name="t", retry_unexpected=True, sleep=no_wait,
                                protocols=(Protocol.V311,)) == 2
    with pytest.raises(KeyError):
        await stay_connected(url, buggy, name="t", retry_unexpected=True, fatal=(KeyError,),
                             protocols=(Protocol.V311,))


async def _never(connection: Connection) -> None:
    raise AssertionError("no broker listens there")
