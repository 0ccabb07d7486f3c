"""Test helpers for the agent: emulated meters on a pty, a small verifying backend, a running agent.

The backend here is the test's own (the real one lives in backend/): it subscribes to every
device's readings, verifies each with the contract, keeps the first copy of each seq, and
publishes the retained ack the agent waits for. Switches let a test pause it, reject seqs for
good, or drop first deliveries (to force the agent's republish).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiomqtt
from meterchain.agent.cli import write_private_key
from meterchain.agent.config import AgentConfig, load_config
from meterchain.agent.service import Agent
from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator
from meterchain.contract.ack import Rejection, ack_topic, device_from_topic
from meterchain.contract.control import SignedAck
from meterchain.contract.errors import MeterchainError
from meterchain.contract.message import Identity, SignedReading, compare, parse_message
from meterchain.contract.note import NoteSigner
from meterchain.contract.policy import verify_reading
from meterchain.contract.signing import generate_private_key_pem, load_signer
from meterchain.mqtt import Backoff

DEVICE = "gw-test-1"
#: The control key the test backends sign acks with; a gateway configured with it verifies them.
TEST_CONTROL = NoteSigner.generate("test.example/control")
FAST_BACKOFF = Backoff(initial=0.1, maximum=0.5)


def broker_client(url: str, identifier: str) -> aiomqtt.Client:
    parts = urlsplit(url)
    return aiomqtt.Client(
        parts.hostname or "127.0.0.1",
        parts.port or 1883,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        identifier=identifier,
        timeout=5,
    )


@dataclass
class VerifyingBackend:
    """Verifies readings with the contract and acks them, retained, per device."""

    broker_url: str
    keys: dict[str, bytes]  # device -> SPKI DER
    stored: dict[str, dict[int, SignedReading]] = field(default_factory=dict)
    deliveries: dict[tuple[str, int], int] = field(default_factory=dict)
    rejected: dict[str, dict[int, Rejection]] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, int]] = field(default_factory=list)
    reject_for_good: dict[int, str] = field(default_factory=dict)  # seq -> reason
    drop_first_delivery: bool = False
    paused: bool = False  # a paused backend receives nothing (as if it were down)
    control: NoteSigner = TEST_CONTROL  # signs the acks (contract/control.py)

    def upto(self, device: str) -> int:
        done = set(self.stored.get(device, {})) | set(self.rejected.get(device, {}))
        upto = 0
        while upto + 1 in done:
            upto += 1
        return upto

    async def run(self) -> None:
        """Serve forever, reconnecting when the broker goes away."""
        while True:
            try:
                async with broker_client(self.broker_url, "test-backend") as client:
                    await client.subscribe("meterchain/v1/+/readings", qos=1)
                    async for message in client.messages:
                        await self._handle(client, message.topic.value, bytes(message.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        if self.paused:
            return
        device = device_from_topic(topic)
        try:
            signed = parse_message(payload)
        except MeterchainError as exc:
            self.invalid.append(exc.check)
            return
        reading = signed.reading
        if device != reading.device or device not in self.keys:
            self.invalid.append("topic")
            return
        key = (device, reading.seq)
        self.deliveries[key] = self.deliveries.get(key, 0) + 1
        if self.drop_first_delivery and self.deliveries[key] == 1:
            return
        stored = self.stored.setdefault(device, {})
        if reading.seq in self.reject_for_good:
            self.rejected.setdefault(device, {})[reading.seq] = Rejection(
                reading.seq, self.reject_for_good[reading.seq], "rejected by the test backend"
            )
        elif reading.seq in stored:
            if compare(stored[reading.seq], signed) is Identity.CONFLICT:
                self.conflicts.append(key)
        else:
            verify_reading(signed, self.keys[device])
            stored[reading.seq] = signed
        ack = SignedAck(
            device,
            self.upto(device),
            tuple((r.seq, r.reason, r.detail) for r in self.rejected.get(device, {}).values()),
            (),
            int(time.time()),
        )
        await client.publish(ack_topic(device), ack.sign([self.control]), qos=1, retain=True)


STOP_WITHIN = 30.0  # seconds a cancelled agent or backend task may take to finish


@contextlib.asynccontextmanager
async def running(coro_factory: Callable[[], object]) -> AsyncIterator[asyncio.Task[None]]:
    """Run a coroutine as a task for the block; cancel it (a crash, for the agent) afterwards."""
    task = asyncio.ensure_future(coro_factory())  # type: ignore[arg-type]
    try:
        yield task
    finally:
        task.cancel()
        # A task that does not stop when cancelled would hang the test (and the event loop's
        # close after it) with no word; say where it is stuck instead.
        await asyncio.wait({task}, timeout=STOP_WITHIN)
        if not task.done():
            stacks = io.StringIO()
            for other in asyncio.all_tasks():
                other.print_stack(file=stacks)
            raise AssertionError(f"the task did not stop within {STOP_WITHIN} s of its cancellation; "
                                 f"the tasks' stacks:\n{stacks.getvalue()}")
        with contextlib.suppress(asyncio.CancelledError):
            await task


class AcceleratedClock:
    """UTC seconds that run ``scale`` times faster than real time (agents', meters' and the
    settlement's clock in accelerated tests)."""

    def __init__(self, origin: float, scale: float) -> None:
        self.origin, self.scale, self.began = origin, scale, time.monotonic()

    def now(self) -> float:
        return self.origin + (time.monotonic() - self.began) * self.scale

    def restart_at(self, origin: float) -> None:
        """Set the clock back to ``origin`` now: a test that starts its services first lets the
        simulated day begin once they are ready, however long a loaded machine took."""
        self.origin, self.began = origin, time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - self.now()) > 0:
            await asyncio.sleep(remaining / self.scale)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Gateway:
    """A key, two emulated meters on one pty bus, and a config for the agent."""

    config: AgentConfig
    bus: ModbusBusEmulator
    spki: bytes

    def agent(self, **kwargs: object) -> Agent:
        return Agent(self.config, backoff=FAST_BACKOFF, **kwargs)  # type: ignore[arg-type]


def gateway_config(device: str, port: str, broker_url: str, ack_timeout: int = 2,
                   control_key: str | None = None) -> str:
    """An agent config for two SDM meters (ids 1 and 2, serials 630001 and 120002) on one bus,
    key and outbox beside the config, one reading per second."""
    return f"""
device_id = "{device}"
key_path = "device.key"
backend_url = "http://127.0.0.1:8000"
interval_seconds = 1
ack_timeout_seconds = {ack_timeout}
outbox_path = "outbox.sqlite"
{f'control_key = "{control_key}"' if control_key else ""}

[broker]
url = "{broker_url}"

[[meters]]
name = "house"
model = "sdm630"
port = "{port}"
baudrate = 9600
modbus_id = 1

[[meters]]
name = "heat-pump"
model = "sdm120"
port = "{port}"
baudrate = 9600
modbus_id = 2
timeout_seconds = 0.3
"""


async def start_gateway(tmp_path: Path, broker_url: str, *, ack_timeout: int = 2,
                        control_key: str | None = None, device: str = DEVICE) -> Gateway:
    """A gateway on two emulated meters; ``control_key`` (a verifier key) makes it verify acks."""
    meters = [
        EmulatedMeter("sdm630", device_id=1, baudrate=9600, serial_number=630001),
        EmulatedMeter("sdm120", device_id=2, baudrate=9600, serial_number=120002),
    ]
    bus = ModbusBusEmulator(meters, wire_delay=False)
    port = await bus.start()
    key_path = tmp_path / "device.key"
    pem = generate_private_key_pem()
    write_private_key(key_path, pem, force=False)
    config_path = tmp_path / "agent.toml"
    config_path.write_text(gateway_config(device, port, broker_url, ack_timeout, control_key))
    return Gateway(load_config(config_path), bus, load_signer(pem).public_key_der)
