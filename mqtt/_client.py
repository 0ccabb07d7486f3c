"""One connection to a broker: ``connect`` owns the protocol choice, client ids and TLS.

A thin asyncio shell over aiomqtt 2.x (pinned ``<3``: it reads aiomqtt's pending-call
bookkeeping to keep the PUBACK reason code that aiomqtt drops). The callers see only
:class:`Connection`: publish, subscribe, and the messages received, as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict, TypeVar, Unpack

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from meterchain.mqtt._url import BrokerUrl
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode

MqttError = aiomqtt.MqttError
T = TypeVar("T")
log = logging.getLogger("meterchain.mqtt")

#: CONNACK codes of a broker that does not speak the version asked for (3.1.1 "unacceptable
#: protocol version", MQTT 5 "unsupported protocol version").
_UNSUPPORTED_PROTOCOL = frozenset({1, 0x84})
#: aiomqtt's message when no CONNACK came in time (amqtt 0.12 never answers an MQTT 5 CONNECT);
#: a TCP connect that timed out says only "timed out" and is an outage.
_NO_CONNACK = "Operation timed out"
#: A persistent MQTT 5 session lives this long after a disconnect (the maximum: "never expires").
_SESSION_FOREVER = 0xFFFFFFFF
# How long a clean DISCONNECT may take before the socket is simply closed. aiomqtt waits for the
# broker's side of the disconnect with no limit; a half-dead connection (or one whose event-loop
# callbacks were torn down by a cancellation) would otherwise hold a cancelled task forever.
_DISCONNECT_TIMEOUT = 2.0


class Protocol(enum.Enum):
    V5 = aiomqtt.ProtocolVersion.V5
    V311 = aiomqtt.ProtocolVersion.V311


class ProtocolUnsupported(MqttError):
    """The broker does not speak MQTT 5 and the caller allowed nothing else."""

    def __init__(self, broker: BrokerUrl) -> None:
        super().__init__(f"the broker at {broker} speaks MQTT 3.1.1 but not MQTT 5")
        self.broker = broker


@dataclass(frozen=True, slots=True)
class ReasonCode:
    """An MQTT reason code (PUBACK, SUBACK): ``value`` and the name MQTT 5 gives it."""

    value: int
    name: str

    @property
    def is_failure(self) -> bool:
        return self.value >= 0x80

    def __str__(self) -> str:
        return self.name


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes when this client goes away without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class ConnectOptions(TypedDict, total=False):
    """How to connect (every key optional; see :func:`connect`)."""

    client_id: str | None
    protocols: tuple[Protocol, ...]
    persistent: bool
    will: Will | None
    keepalive: int
    timeout: float
    max_inflight: int | None
    logger: logging.Logger | None


def random_client_id() -> str:
    """A client id of its own for a connection that keeps no session."""
    return f"meterchain-{secrets.token_hex(6)}"


def unique_client_id(base: str) -> str:
    """``<base>-<hostname>-<pid>``: one id per process when several run the same config."""
    return f"{base}-{socket.gethostname()}-{os.getpid()}"


def _reason_code(code: Any) -> ReasonCode:
    if isinstance(code, int):  # an MQTT 3.1.1 SUBACK: the granted QoS, or 0x80 for a refusal
        return ReasonCode(code, "Failure" if code >= 0x80 else f"Granted QoS {code}")
    return ReasonCode(int(code.value), str(code))


class _Client(aiomqtt.Client):
    """aiomqtt's client, keeping the PUBACK reason codes and queueing messages as bytes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: dict[int, ReasonCode] = {}
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        #: CPU-ns spent in paho's socket reads and writes (decoding PUBLISHes, queueing them,
        #: PUBACKs): what receiving costs, for ingest's per-stage figures (issue 20).
        self.cpu_ns = 0
        for name in ("loop_read", "loop_write"):
            setattr(self._client, name, self._timed(getattr(self._client, name)))

    def _timed(self, call: Any) -> Any:
        def timed(*args: Any) -> Any:
            started = time.thread_time_ns()
            try:
                return call(*args)
            finally:
                self.cpu_ns += time.thread_time_ns() - started
        return timed

    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:
        """aiomqtt's bounded wait (CONNACK, SUBACK, PUBACK: "Operation timed out"), through
        asyncio.timeout rather than asyncio.wait_for: on Python 3.11 wait_for returns the result
        when a cancellation comes in the turn it arrives, and a stopped publisher (an agent's
        status loop) published on after its stop, hanging the agent's shutdown."""
        if timeout is None:
            timeout = self.timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            raise MqttError("Operation timed out") from None

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.inbox.put_nowait(Message(message.topic, bytes(message.payload), message.retain))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self.refused[mid] = _reason_code(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, qos: int, retain: bool,
                              timeout: float | None) -> ReasonCode | None:
        """aiomqtt's publish (same bookkeeping), returning the broker's refusal if any."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            cause = self._disconnected.exception() if self._disconnected.done() else None
            raise MqttCodeError(info.rc, "Could not publish message") from cause
        try:
            if not info.is_published():
                confirmation = asyncio.Event()
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    await self._wait_for(confirmation.wait(), timeout=timeout)
        except BaseException:
            self.refused.pop(info.mid, None)
            raise
        return self.refused.pop(info.mid, None)

    async def next_message(self) -> Message:
        """The next message; raises :class:`MqttError` when the connection is lost first."""
        if not self.inbox.empty():
            return self.inbox.get_nowait()
        getter = asyncio.ensure_future(self.inbox.get())
        try:
            await asyncio.wait((getter, self._disconnected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        cause = self._disconnected.exception() if self._disconnected.done() else None
        raise MqttError("Disconnected during message iteration") from cause

    def abandon(self) -> None:
        """Close the socket of a connection attempt that failed (aiomqtt leaves it open)."""
        with contextlib.suppress(Exception):
            self._client._sock_close()


class Connection:
    """An open connection. Every method raises :class:`MqttError` once it is lost."""

    def __init__(self, client: _Client, protocol: Protocol, broker: BrokerUrl) -> None:
        self._client = client
        self.protocol = protocol
        self.broker = broker

    @property
    def client_id(self) -> str:
        return self._client.identifier

    @property
    def cpu_ns(self) -> int:
        """CPU-ns this connection's client spent reading and writing its socket (receive)."""
        return self._client.cpu_ns

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> ReasonCode | None:
        """Publish and wait for the broker (the PUBACK at QoS 1). Returns the refusal of an
        MQTT 5 broker (e.g. 0x87 Not authorized), None when it took the message; under 3.1.1 a
        broker drops a refused message silently and this returns None."""
        return await self._client.publish_checked(topic, payload, qos, retain, timeout)

    async def subscribe(self, topic_filter: str, *, qos: int = 1,
                        timeout: float | None = None) -> tuple[ReasonCode, ...]:
        """Subscribe; returns the broker's answer per filter (a failure code >= 0x80 if it
        refused, e.g. 0x87 not authorized or 0x9E shared subscriptions not supported)."""
        granted = await self._client.subscribe(topic_filter, qos=qos, timeout=timeout)
        return tuple(_reason_code(code) for code in granted)

    async def messages(self) -> AsyncIterator[Message]:
        """Every message received, in order, until the connection is lost (then MqttError)."""
        while True:
            yield await self._client.next_message()

    async def receive(self, limit: int) -> list[Message]:
        """Wait for one message, then take up to ``limit`` of those already received."""
        batch = [await self._client.next_message()]
        inbox = self._client.inbox
        while len(batch) < limit and not inbox.empty():
            batch.append(inbox.get_nowait())
        return batch


def _client(url: BrokerUrl, protocol: Protocol, client_id: str, options: ConnectOptions
            ) -> _Client:
    persistent = options.get("persistent", False)
    session: dict[str, Any] = {}
    if protocol is Protocol.V5:
        session["clean_start"] = not persistent
        if persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = _SESSION_FOREVER
            session["properties"] = properties
    else:
        session["clean_session"] = not persistent
    will = options.get("will")
    tls = url.tls
    max_inflight = options.get("max_inflight")
    client = _Client(
        url.host,
        url.port,
        username=url.username,
        password=url.password,
        identifier=client_id,
        protocol=protocol.value,
        will=aiomqtt.Will(will.topic, will.payload, will.qos, will.retain) if will else None,
        keepalive=options.get("keepalive", 60),
        timeout=options.get("timeout", 10.0),
        max_inflight_messages=max_inflight,
        logger=options.get("logger") or log,
        tls_params=None if tls is None else aiomqtt.TLSParameters(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        ),
        **session,
    )
    if max_inflight:  # aiomqtt warns above 10 pending calls; a full window is by design
        client.pending_calls_threshold = max(client.pending_calls_threshold, max_inflight)
    return client


async def _attempt(url: BrokerUrl, protocol: Protocol, client_id: str, options: ConnectOptions
                   ) -> _Client:
    client = _client(url, protocol, client_id, options)
    try:
        await client.__aenter__()
    except BaseException:
        client.abandon()
        raise
    return client


def _unsupported(exc: MqttError) -> bool:
    """The broker refused the protocol version, or never answered (amqtt 0.12 and MQTT 5)."""
    if isinstance(exc, MqttConnectError):
        code = exc.rc.value if isinstance(exc.rc, PahoReasonCode) else exc.rc
        return code in _UNSUPPORTED_PROTOCOL
    return str(exc) == _NO_CONNACK


async def _open(url: BrokerUrl, options: ConnectOptions) -> tuple[_Client, Protocol]:
    protocols = options.get("protocols", (Protocol.V5, Protocol.V311))
    client_id = options.get("client_id") or random_client_id()
    if protocols == (Protocol.V311,):
        return await _attempt(url, Protocol.V311, client_id, options), Protocol.V311
    try:
        return await _attempt(url, Protocol.V5, client_id, options), Protocol.V5
    except MqttError as exc:
        if not _unsupported(exc):
            raise
        refused = exc
    if isinstance(refused, MqttConnectError) and Protocol.V311 not in protocols:
        raise ProtocolUnsupported(url) from refused
    # MQTT 5 refused or unanswered: does the broker speak 3.1.1? Asked again on every connect,
    # so a broker upgraded to MQTT 5 is used as such from the next connection on. When only
    # MQTT 5 will do, this tells a broker that ignores it from one that is down.
    client = await _attempt(url, Protocol.V311, client_id, options)
    if Protocol.V311 not in protocols:
        await client.__aexit__(None, None, None)
        raise ProtocolUnsupported(url) from refused
    log.info("event=mqtt5_unsupported broker=%s client=%s fallback=3.1.1", url, client_id)
    return client, Protocol.V311


@contextlib.asynccontextmanager
async def connect(url: BrokerUrl, **options: Unpack[ConnectOptions]) -> AsyncIterator[Connection]:
    """Connect to ``url`` for the ``async with`` block, and disconnect cleanly after it.

    ``protocols``: the versions the caller accepts, MQTT 5 first unless it is ``(V311,)``;
    with both (the default) a broker that refuses MQTT 5, or does not answer it, gets 3.1.1.
    With ``(V5,)`` such a broker raises :class:`ProtocolUnsupported`.
    ``client_id``: None for a random one. ``persistent``: a session that outlives the
    connection (clean session off; under MQTT 5 a session that never expires).
    ``timeout``: seconds for the CONNACK and the default for every later call.
    """
    client, protocol = await _open(url, options)
    try:
        yield Connection(client, protocol, url)
    except BaseException as exc:
        await _disconnect(client, exc)
        raise
    else:
        await _disconnect(client, None)


async def _disconnect(client: _Client, exc: BaseException | None) -> None:
    """A clean DISCONNECT, bounded: past the limit (or on any error) the socket is just closed."""
    try:
        await asyncio.wait_for(
            client.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None),
            timeout=_DISCONNECT_TIMEOUT,
        )
    except (TimeoutError, aiomqtt.MqttError):
        log.warning("event=mqtt_disconnect_abandoned client=%s", client.identifier)
        client.abandon()
