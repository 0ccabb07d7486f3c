"""Home Assistant MQTT discovery and state for each meter, published to the household's own broker.

Off by default. When on, every meter the agent reads appears in Home Assistant as a device
(manufacturer, model, serial number, reached *via* the gateway) with sensors Home Assistant's
Energy dashboard accepts without configuration: energy import and export in kWh with
``device_class: energy`` and ``state_class: total_increasing``; power in W and voltage in V
(``state_class: measurement``) when the reading has them.

Home Assistant reads any drop of a ``total_increasing`` value as a new meter cycle (the
dashboard would count the whole register again), so a cumulative value published here never
goes down: :class:`MonotonicGuard` holds the highest value published per meter and register,
in a small JSON file written (atomically) *before* the state that carries it is published. A
restarted agent therefore cannot publish less than it did before the restart either. A meter
exchange is not a drop: a new serial is a new device with new unique ids.

Topics (``<p>`` = discovery prefix, default ``homeassistant``; ids only ``[a-zA-Z0-9_-]``):

- ``<p>/sensor/<unique_id>/config``: one retained discovery payload per sensor (Home Assistant's
  documented best practice: object id = unique id, no node id);
- ``<p>/sensor/<gateway node>/<meter id>/state``: one retained JSON state per meter, read by
  each sensor's ``value_template``; kWh written as exact decimals from integer Wh;
- ``<p>/sensor/<gateway node>/availability``: ``online`` (retained) after connecting,
  ``offline`` as the MQTT last will and on a clean stop.

The pure part (topics, payloads, the guard's decisions) is plain functions over values; the
:class:`HomeAssistantPublisher` is a thin shell on meterchain.mqtt that never blocks or raises
into the agent: :meth:`HomeAssistantPublisher.update` only stores the newest state per meter and wakes
the publishing task, which reconnects with backoff and counts and logs every failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from meterchain.contract.errors import MeterchainError
from meterchain.contract.reading import MAX_SAFE_INT
from meterchain.mqtt import (
    Backoff,
    BrokerUrl,
    BrokerUrlError,
    Connection,
    Failure,
    MqttError,
    Protocol,
    Will,
    redact,
    stay_connected,
)

log = logging.getLogger(__name__)

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
PAYLOAD_AVAILABLE = "online"
PAYLOAD_NOT_AVAILABLE = "offline"
#: Largest value accepted for any register or measurement (JSON clients stay exact below it).
MAX_VALUE = MAX_SAFE_INT
_ID_OK = re.compile(r"[a-zA-Z0-9_-]+")
_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_SERIAL_RE = re.compile(r"[\x21-\x7e]{1,64}")
GUARD_FILE_VERSION = 1


class HomeAssistantError(MeterchainError):
    """A bad broker URL, meter description or guard file of the Home Assistant publisher."""

    check = "homeassistant"


# --- meters and sensors as data --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterModel:
    manufacturer: str
    model: str
    phases: int


#: The agent's ``meters[].model`` values, as Home Assistant's device registry shows them.
METER_MODELS: Mapping[str, MeterModel] = {
    "sdm630": MeterModel("Eastron", "SDM630", 3),
    "sdm120": MeterModel("Eastron", "SDM120", 1),
}


@dataclass(frozen=True, slots=True)
class MeterDevice:
    """Who a meter is, for Home Assistant's device registry."""

    serial: str
    manufacturer: str
    model: str
    name: str | None = None  # the agent's meter name ("house"); default "<model> <serial>"

    @classmethod
    def for_model(cls, model_key: str, serial: str, name: str | None = None) -> MeterDevice:
        """The device of a meter configured as ``model_key`` (``sdm630``, ``sdm120``)."""
        known = METER_MODELS.get(model_key)
        if known is None:
            raise HomeAssistantError(
                f"unknown meter model {model_key!r}", model=model_key, known=sorted(METER_MODELS)
            )
        return cls(serial, known.manufacturer, known.model, name)

    @property
    def identifier(self) -> str:
        """The device's id in Home Assistant; also names its state topic and guard entry."""
        return f"meterchain_{topic_id(self.model.lower())}_{topic_id(self.serial)}"


@dataclass(frozen=True, slots=True)
class MeterState:
    """One update of a meter: cumulative registers in integral Wh, optional power and voltage."""

    import_wh: int
    export_wh: int
    power_w: int | None = None  # net active power, positive = import
    voltage_dv: tuple[int, ...] = ()  # decivolts per phase, L1 first


@dataclass(frozen=True, slots=True)
class SensorKind:
    key: str  # suffix of the unique id
    name: str
    field: str  # key in the state JSON
    device_class: str
    state_class: str
    unit: str
    precision: int
    cumulative_register: str | None = None  # the MeterState field the guard keeps monotonic


ENERGY_IMPORT = SensorKind(
    "energy_import",
    "Energy import",
    "energy_import_kwh",
    "energy",
    "total_increasing",
    "kWh",
    3,
    cumulative_register="import_wh",
)
ENERGY_EXPORT = SensorKind(
    "energy_export",
    "Energy export",
    "energy_export_kwh",
    "energy",
    "total_increasing",
    "kWh",
    3,
    cumulative_register="export_wh",
)
POWER = SensorKind("power", "Power", "power_w", "power", "measurement", "W", 0)
CUMULATIVE_REGISTERS = ("import_wh", "export_wh")


def voltage_sensor(phase: int) -> SensorKind:
    """The voltage sensor of phase ``phase`` (1-based)."""
    return SensorKind(
        f"voltage_l{phase}",
        f"Voltage L{phase}",
        f"voltage_l{phase}_v",
        "voltage",
        "measurement",
        "V",
        1,
    )


def sensors_for(state: MeterState) -> tuple[SensorKind, ...]:
    """The sensors a state carries: both energies always, power and voltages when present."""
    kinds = [ENERGY_IMPORT, ENERGY_EXPORT]
    if state.power_w is not None:
        kinds.append(POWER)
    kinds += [voltage_sensor(phase) for phase in range(1, len(state.voltage_dv) + 1)]
    return tuple(kinds)


# --- topics and payloads (pure) ---------------------------------------------------------------


def topic_id(text: str) -> str:
    """``text`` as a discovery topic id (``[a-zA-Z0-9_-]+``), distinct for distinct inputs.

    Unchanged when already valid; otherwise bad characters become ``_`` and 8 hex digits of
    the text's SHA-256 are appended, so ``A.1`` and ``A_1`` stay two meters.
    """
    if _ID_OK.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{_ID_BAD_CHARS.sub('_', text)}_{digest}"


@dataclass(frozen=True, slots=True)
class Topics:
    """Where one gateway's discovery, availability and states go."""

    gateway_id: str
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX

    def __post_init__(self) -> None:
        prefix = self.discovery_prefix
        if (
            not prefix
            or prefix.startswith("/")
            or prefix.endswith("/")
            or any(c in prefix for c in "+#\0")
        ):
            raise HomeAssistantError(
                "discovery prefix must be a non-empty topic without wildcards or outer slashes",
                discovery_prefix=prefix,
            )

    @property
    def gateway_identifier(self) -> str:
        return f"meterchain_gateway_{topic_id(self.gateway_id)}"

    @property
    def availability(self) -> str:
        return f"{self.discovery_prefix}/sensor/{self.gateway_identifier}/availability"

    def state(self, device: MeterDevice) -> str:
        return f"{self.discovery_prefix}/sensor/{self.gateway_identifier}/{device.identifier}/state"

    def config(self, unique_id: str) -> str:
        return f"{self.discovery_prefix}/sensor/{unique_id}/config"


def unique_id(device: MeterDevice, kind: SensorKind) -> str:
    return f"{device.identifier}_{kind.key}"


def device_block(device: MeterDevice, topics: Topics) -> dict[str, object]:
    """The ``device`` mapping: identifiers, manufacturer, model, serial, via the gateway."""
    return {
        "identifiers": [device.identifier],
        "name": device.name or f"{device.model} {device.serial}",
        "manufacturer": device.manufacturer,
        "model": device.model,
        "serial_number": device.serial,
        "via_device": topics.gateway_identifier,
    }


def _software_version() -> str:
    try:
        return metadata.version("meterchain")
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def discovery_messages(
    device: MeterDevice, kinds: tuple[SensorKind, ...], topics: Topics
) -> list[tuple[str, dict[str, object]]]:
    """(config topic, payload) of every sensor of ``device``, unabbreviated keys."""
    origin = {"name": "meterchain", "sw_version": _software_version()}
    messages: list[tuple[str, dict[str, object]]] = []
    for kind in kinds:
        uid = unique_id(device, kind)
        payload: dict[str, object] = {
            "name": kind.name,
            "unique_id": uid,
            "object_id": uid,
            "state_topic": topics.state(device),
            "value_template": f"{{{{ value_json.{kind.field} }}}}",
            "availability_topic": topics.availability,
            "payload_available": PAYLOAD_AVAILABLE,
            "payload_not_available": PAYLOAD_NOT_AVAILABLE,
            "device_class": kind.device_class,
            "state_class": kind.state_class,
            "unit_of_measurement": kind.unit,
            "suggested_display_precision": kind.precision,
            "qos": 1,
            "device": device_block(device, topics),
            "origin": origin,
        }
        messages.append((topics.config(uid), payload))
    return messages


def decimal_text(value: int, places: int) -> str:
    """``value / 10**places`` written exactly (``1234567, 3`` -> ``1234.567``); no float involved."""
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), 10**places)
    return f"{sign}{whole}.{fraction:0{places}d}" if places else f"{sign}{whole}"


def state_payload(state: MeterState) -> bytes:
    """The meter's JSON state: kWh with 3 exact decimals from Wh, W as integer, V with 1 decimal.

    Written by hand rather than by ``json.dumps`` so that no value passes through a float.
    """
    numbers = {
        ENERGY_IMPORT.field: decimal_text(state.import_wh, 3),
        ENERGY_EXPORT.field: decimal_text(state.export_wh, 3),
    }
    if state.power_w is not None:
        numbers[POWER.field] = decimal_text(state.power_w, 0)
    for phase, decivolts in enumerate(state.voltage_dv, start=1):
        numbers[voltage_sensor(phase).field] = decimal_text(decivolts, 1)
    body = ", ".join(f"{json.dumps(key)}: {text}" for key, text in numbers.items())
    return ("{" + body + "}").encode()


def validate_update(device: MeterDevice, state: MeterState) -> None:
    """Raise :class:`HomeAssistantError` naming the first bad field of an update."""
    if not isinstance(device.serial, str) or not _SERIAL_RE.fullmatch(device.serial):
        raise HomeAssistantError(
            "meter serial must be 1-64 printable ASCII characters", serial=device.serial
        )
    for text_field in ("manufacturer", "model"):
        value = getattr(device, text_field)
        if not isinstance(value, str) or not value.strip():
            raise HomeAssistantError(
                f"meter {text_field} must be a non-empty string", serial=device.serial
            )
    checks: list[tuple[str, object, int]] = [
        ("import_wh", state.import_wh, 0),
        ("export_wh", state.export_wh, 0),
    ]
    if state.power_w is not None:
        checks.append(("power_w", state.power_w, -MAX_VALUE))
    if not isinstance(state.voltage_dv, tuple) or len(state.voltage_dv) > 3:
        raise HomeAssistantError(
            "voltage_dv must be a tuple of at most 3 phases", serial=device.serial
        )
    checks += [(f"voltage_dv[{i}]", v, 0) for i, v in enumerate(state.voltage_dv)]
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_VALUE:
            raise HomeAssistantError(
                f"{name} must be an integer in [{low}, 2^53-1]",
                serial=device.serial,
                field=name,
                value=value,
            )


# --- the never-decreasing rule ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldValue:
    """A register value that was lower than one already published, so it was not published."""

    meter: str
    register: str
    offered: int
    published: int


@dataclass(frozen=True, slots=True)
class Admission:
    state: MeterState  # what may be published: offered values, or the last published when lower
    held: tuple[HeldValue, ...]


class MonotonicGuard:
    """The highest published value per meter and cumulative register, kept across restarts.

    :meth:`admit` is pure bookkeeping in memory; :meth:`save` writes the file (temp file,
    fsync, rename). Publish a state only after the :meth:`save` that follows its admission:
    then the file is never behind what Home Assistant has seen.
    """

    def __init__(
        self, path: Path | None = None, last: Mapping[str, Mapping[str, int]] | None = None
    ) -> None:
        self.path = path
        self._last: dict[str, dict[str, int]] = {}
        self._dirty = False
        for meter, registers in (last or {}).items():
            for register, value in registers.items():
                self._remember(meter, register, value, source="initial values")

    @classmethod
    def load(cls, path: Path) -> MonotonicGuard:
        """The guard saved at ``path``; empty if there is no file yet.

        A file that cannot be read or parsed is an error, not an empty guard: starting from
        nothing could publish a lower value. Delete the file only if Home Assistant's history
        of these meters may start again.
        """
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise HomeAssistantError(
                f"cannot read guard file {path}: {exc}", path=str(path)
            ) from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HomeAssistantError(
                f"guard file {path} is not JSON: {exc}", path=str(path)
            ) from None
        if not isinstance(data, dict) or data.get("version") != GUARD_FILE_VERSION:
            raise HomeAssistantError(
                f"guard file {path} is not a version {GUARD_FILE_VERSION} guard", path=str(path)
            )
        meters = data.get("meters")
        if not isinstance(meters, dict) or not all(isinstance(v, dict) for v in meters.values()):
            raise HomeAssistantError(
                f"guard file {path}: 'meters' must map meter ids to tables", path=str(path)
            )
        try:
            guard = cls(path, meters)
        except HomeAssistantError as exc:
            error = HomeAssistantError(f"guard file {path}: {exc}")
            error.context = {**exc.context, "path": str(path)}
            raise error from None
        guard._dirty = False
        return guard

    def _remember(self, meter: str, register: str, value: object, *, source: str) -> None:
        if register not in CUMULATIVE_REGISTERS:
            raise HomeAssistantError(
                f"{source}: unknown register {register!r}", meter=meter, register=register
            )
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
            raise HomeAssistantError(
                f"{source}: {meter}.{register} must be an integer in [0, 2^53-1]",
                meter=meter,
                register=register,
                value=value,
            )
        current = self._last.setdefault(meter, {}).get(register)
        if current is None or value > current:
            self._last[meter][register] = value
            self._dirty = True

    def last(self, meter: str, register: str) -> int | None:
        """The highest value admitted for ``meter``'s ``register``, if any."""
        return self._last.get(meter, {}).get(register)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {meter: dict(registers) for meter, registers in self._last.items()}

    def admit(self, meter: str, state: MeterState) -> Admission:
        """The state to publish: each register as offered, or held at its last value if lower."""
        held: list[HeldValue] = []
        values: dict[str, Any] = {}  # dataclasses.replace's keywords: MeterState's fields
        for register in CUMULATIVE_REGISTERS:
            offered = getattr(state, register)
            previous = self.last(meter, register)
            if previous is not None and offered < previous:
                held.append(HeldValue(meter, register, offered, previous))
                values[register] = previous
            else:
                values[register] = offered
                self._remember(meter, register, offered, source="update")
        return Admission(replace(state, **values), tuple(held))

    def save(self) -> None:
        """Write the file if anything changed since the last save (atomic: temp, fsync, rename)."""
        if self.path is None or not self._dirty:
            return
        data = {"version": GUARD_FILE_VERSION, "meters": self._last}
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):  # not every filesystem can fsync a directory
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._dirty = False


# --- the MQTT shell ----------------------------------------------------------------------------


@dataclass
class HomeAssistantStats:
    """Counters of the publisher (the agent may mirror them into its metrics)."""

    connects: int = 0
    connection_failures: int = 0
    discovery_published: int = 0
    states_published: int = 0
    values_held: int = 0
    invalid_updates: int = 0
    guard_save_failures: int = 0


@dataclass
class _Pending:
    device: MeterDevice
    state: MeterState


class HomeAssistantPublisher:
    """Discovery, availability and states of the agent's meters on a Home Assistant broker.

    Run :meth:`run` as a task for the life of the agent and call :meth:`update` after every
    successful meter read. Cancel the task to stop; it then publishes ``offline``.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        gateway_id: str,
        guard: MonotonicGuard,
        discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 10.0,
    ) -> None:
        try:
            self.broker = BrokerUrl.parse(broker_url)
        except BrokerUrlError as exc:
            raise HomeAssistantError(str(exc), url=redact(broker_url)) from None
        self.broker_url = str(self.broker)
        self.topics = Topics(gateway_id, discovery_prefix)
        self.guard = guard
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.stats = HomeAssistantStats()
        self.connected = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._known: dict[str, tuple[MeterDevice, tuple[SensorKind, ...]]] = {}
        self._announced_kinds: dict[str, tuple[SensorKind, ...]] = {}
        self._wake = asyncio.Event()

    def update(self, device: MeterDevice, state: MeterState) -> bool:
        """Queue the newest state of a meter for publishing; never blocks, never raises.

        Only the newest state per meter is kept while the broker is away. Returns False (and
        logs and counts) when the update is malformed.
        """
        try:
            validate_update(device, state)
        except HomeAssistantError as exc:
            self.stats.invalid_updates += 1
            log.warning("event=ha_update_invalid detail=%r", exc.diagnostics())
            return False
        meter = device.identifier
        self._known[meter] = (device, sensors_for(state))  # a change is announced again
        self._pending[meter] = _Pending(device, state)
        self._wake.set()
        return True

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff after every failure, until cancelled."""
        await stay_connected(
            self.broker,
            self._session,
            name="homeassistant",
            backoff=self.backoff,
            rng=self.rng,
            on_failure=self._lost,
            retry_unexpected=True,  # never raise into the agent
            log_to=log,
            client_id=f"meterchain-ha-{self.topics.gateway_identifier}",
            # Home Assistant's own default is 3.1.1, so every broker it works with speaks it.
            protocols=(Protocol.V311,),
            will=Will(self.topics.availability, PAYLOAD_NOT_AVAILABLE.encode(), qos=1, retain=True),
            timeout=self.connect_timeout,
            logger=logging.getLogger("meterchain.agent.homeassistant.mqtt"),
        )

    def _lost(self, failure: Failure) -> None:
        self.connected.clear()
        self.stats.connection_failures += 1

    async def _publish(self, client: Connection, topic: str, payload: bytes) -> None:
        await client.publish(topic, payload, qos=1, retain=True, timeout=self.publish_timeout)

    async def _session(self, client: Connection) -> None:
        try:
            await self._publish(client, self.topics.availability, PAYLOAD_AVAILABLE.encode())
            self.stats.connects += 1
            self.connected.set()
            log.info(
                "event=ha_connected broker=%s gateway=%s", self.broker_url, self.topics.gateway_id
            )
            announced: dict[str, tuple[MeterDevice, tuple[SensorKind, ...]]] = {}
            while True:
                self._wake.clear()
                await self._announce(client, announced)
                await self._publish_states(client)
                await self._wake.wait()
        except asyncio.CancelledError:
            # A clean DISCONNECT does not fire the will: say "offline" ourselves, briefly.
            with contextlib.suppress(MqttError, TimeoutError, asyncio.CancelledError):
                await client.publish(
                    self.topics.availability,
                    PAYLOAD_NOT_AVAILABLE.encode(),
                    qos=1,
                    retain=True,
                    timeout=1.0,
                )
            raise

    async def _announce(
        self,
        client: Connection,
        announced: dict[str, tuple[MeterDevice, tuple[SensorKind, ...]]],
    ) -> None:
        """Retained discovery for every meter not yet announced in this session (or changed)."""
        for meter, known in list(self._known.items()):
            if announced.get(meter) == known:
                continue
            device, kinds = known
            for topic, payload in discovery_messages(device, kinds, self.topics):
                await self._publish(
                    client, topic, json.dumps(payload, separators=(",", ":")).encode()
                )
                self.stats.discovery_published += 1
            # A sensor this process announced before that the meter no longer carries: an empty
            # retained config removes it (its template would find no field in the state).
            for dropped in set(self._announced_kinds.get(meter, ())) - set(kinds):
                await self._publish(client, self.topics.config(unique_id(device, dropped)), b"")
            self._announced_kinds[meter] = kinds
            announced[meter] = known
            log.info(
                "event=ha_discovery meter=%s serial=%s sensors=%d", meter, device.serial, len(kinds)
            )

    async def _publish_states(self, client: Connection) -> None:
        """Admit every pending state, save the guard once (one fsync per poll), then publish."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        admitted: dict[str, tuple[_Pending, MeterState]] = {}
        for meter, pending in batch.items():
            admission = self.guard.admit(meter, pending.state)
            for held in admission.held:
                self.stats.values_held += 1
                log.warning(
                    "event=ha_value_held meter=%s register=%s offered=%d published=%d"
                    " reason=never_publish_lower_cumulative_value",
                    held.meter,
                    held.register,
                    held.offered,
                    held.published,
                )
            admitted[meter] = (pending, admission.state)
        try:
            self.guard.save()
        except OSError as exc:
            # Publishing now could leave the file behind Home Assistant: after a restart a
            # lower value might go out. Keep the updates; the next update retries the save.
            self.stats.guard_save_failures += 1
            self._requeue(batch)
            log.error("event=ha_guard_save_failed path=%s error=%r", self.guard.path, str(exc))
            return
        for meter, (pending, state) in admitted.items():
            try:
                await self._publish(client, self.topics.state(pending.device), state_payload(state))
            except MqttError:
                self._requeue(batch)
                raise
            del batch[meter]
            self.stats.states_published += 1

    def _requeue(self, batch: dict[str, _Pending]) -> None:
        """Put unpublished updates back, unless a newer update of the same meter came meanwhile."""
        for meter, pending in batch.items():
            self._pending.setdefault(meter, pending)
