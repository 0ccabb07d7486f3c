"""The agent's TOML configuration, parsed into frozen dataclasses.

Every error names the file and the key (``meters[1].baudrate``) so an installer can fix it without
reading code. Relative paths are resolved against the config file's folder, so a config and its key
can travel together. docs/agent.md documents every key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from meterchain.contract.errors import MeterchainError
from meterchain.contract.reading import (
    DEFAULT_INTERVAL_SECONDS,
    DEVICE_ID_RE,
    MAX_INTERVAL_SECONDS,
    METER_SERIAL_RE,
)
from meterchain.mqtt import BrokerUrl, BrokerUrlError, TlsFiles

if TYPE_CHECKING:
    from meterchain.agent.dlms_config import DlmsSettings

METER_MODELS = ("sdm630", "sdm120", "dlms")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
DEFAULT_ACK_TIMEOUT_SECONDS = 60
DEFAULT_MAX_INFLIGHT = 100
DEFAULT_BATCH_SIZE = 500


class ConfigError(MeterchainError):
    """The config file is missing, not TOML, or a key has a bad value."""

    check = "config"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The broker (its URL with the login and TLS files: meterchain.mqtt) and how to publish."""

    address: BrokerUrl
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def url(self) -> str:
        """The broker without credentials (safe to log)."""
        return str(self.address)


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    """Publishing the meters to a household's own Home Assistant broker (off unless configured)."""

    url: str
    discovery_prefix: str = "homeassistant"
    guard_path: Path | None = None  # default: beside the outbox


@dataclass(frozen=True, slots=True)
class MeterConfig:
    name: str
    model: str
    port: str
    baudrate: int
    modbus_id: int
    serial: str | None = None  # overrides the serial the meter reports
    timeout_seconds: float = 1.0
    dlms: DlmsSettings | None = None  # set for model "dlms" (agent/dlms_config.py)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    device_id: str
    key_path: Path
    backend_url: str
    broker: BrokerConfig
    meters: tuple[MeterConfig, ...]
    outbox_path: Path
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS
    ack_timeout_seconds: int = DEFAULT_ACK_TIMEOUT_SECONDS
    homeassistant: HomeAssistantConfig | None = None
    telemetry_seconds: int = 5  # live unsigned power/voltage (agent/telemetry.py); 0 = off
    #: The backend's control key, ``name+hash+base64``: every ack must be signed by it
    #: (docs/agent.md, "Signed acks"). None: acks are taken unverified, each with an alarm.
    control_key: str | None = None
    #: The log's verifier key and the witness policy's text, as provisioning wrote them: receipts
    #: are verified with them (agent/receipts.py). Without a log key receipts are not taken.
    log_key: str | None = None
    witness_policy: str | None = None


class _Table:
    """A TOML table with typed getters whose errors name the file and the dotted key."""

    def __init__(self, data: dict[str, Any], file: Path, prefix: str, known: set[str]) -> None:
        self.data, self.file, self.prefix = data, file, prefix
        unknown = sorted(set(data) - known)
        if unknown:
            raise self.error(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, problem: str) -> ConfigError:
        key = self.key(name)
        return ConfigError(f"{self.file}: {key}: {problem}", file=str(self.file), key=key)

    def get(
        self, name: str, kind: type | tuple[type, ...], default: Any = ..., what: str = ""
    ) -> Any:
        if name not in self.data:
            if default is ...:
                raise self.error(name, "required key is missing")
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"must be {what or _kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {what or _kind_name(kind)}, got {value!r}")
        return value

    def integer(self, name: str, low: int, high: int, default: Any = ...) -> int:
        value = self.get(name, int, default)
        if not low <= value <= high:
            raise self.error(name, f"{value} is outside [{low}, {high}]")
        return int(value)

    def path(self, name: str, default: Any = ...) -> Path:
        value = self.get(name, str, default, what="a path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.file.parent / path)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent config file; raise :class:`ConfigError` naming the bad key."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config ({exc.strerror})", file=str(file)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: config is not UTF-8 text", file=str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})", file=str(file)) from None
    return parse_config(raw, file)


def parse_config(raw: dict[str, Any], file: Path) -> AgentConfig:
    """Validate an already parsed TOML document (``file`` names it in errors, anchors paths)."""
    top = _Table(
        raw,
        file,
        "",
        {
            "device_id",
            "key_path",
            "backend_url",
            "outbox_path",
            "interval_seconds",
            "ack_timeout_seconds",
            "broker",
            "meters",
            "homeassistant_url",
            "homeassistant",
            "telemetry_seconds",
            "control_key",
            "log_key",
            "witness_policy",
        },
    )
    device_id = top.get("device_id", str)
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise top.error(
            "device_id", "must be 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    interval = top.integer("interval_seconds", 1, MAX_INTERVAL_SECONDS, DEFAULT_INTERVAL_SECONDS)
    if MAX_INTERVAL_SECONDS % interval:
        raise top.error("interval_seconds", f"{interval} does not divide a day (86400 s)")
    backend_url = top.get("backend_url", str)
    if urlsplit(backend_url).scheme not in ("http", "https"):
        raise top.error("backend_url", f"must be an http:// or https:// URL, got {backend_url!r}")
    meters_raw = top.get("meters", list, what="a list of [[meters]] tables")
    if not meters_raw:
        raise top.error("meters", "at least one [[meters]] table is required")
    meters = tuple(_parse_meter(item, file, index) for index, item in enumerate(meters_raw))
    names = [m.name for m in meters]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(
                f"{file}: meters[{index}].name: {name!r} is used twice",
                file=str(file),
                key=f"meters[{index}].name",
            )
    from meterchain.agent.dlms_config import check_dlms_ports

    check_dlms_ports(meters, file)
    # Modbus ids only: DLMS meters have none (check_dlms_ports told apart those of one line).
    slots = [(m.port, m.modbus_id) if m.dlms is None else None for m in meters]
    for index, slot in enumerate(slots):
        if slot is not None and slot in slots[:index]:
            raise ConfigError(
                f"{file}: meters[{index}].modbus_id: id {slot[1]} on {slot[0]} is used twice",
                file=str(file),
                key=f"meters[{index}].modbus_id",
            )
    speeds: dict[str, int] = {}
    for index, meter in enumerate(meters):
        if speeds.setdefault(meter.port, meter.baudrate) != meter.baudrate:
            raise ConfigError(
                f"{file}: meters[{index}].baudrate: {meter.baudrate} differs from"
                f" {speeds[meter.port]} of another meter on {meter.port} (one bus, one speed)",
                file=str(file),
                key=f"meters[{index}].baudrate",
            )
    return AgentConfig(
        device_id=device_id,
        key_path=top.path("key_path"),
        backend_url=backend_url,
        broker=_parse_broker(top.get("broker", dict), file),
        meters=meters,
        outbox_path=top.path("outbox_path", "outbox.sqlite"),
        interval_seconds=interval,
        ack_timeout_seconds=top.integer(
            "ack_timeout_seconds", 1, 86_400, DEFAULT_ACK_TIMEOUT_SECONDS
        ),
        homeassistant=_parse_homeassistant(top, raw, file),
        telemetry_seconds=top.integer("telemetry_seconds", 0, 3600, 5),
        control_key=_parse_control_key(top),
        log_key=_parse_log_key(top),
        witness_policy=_parse_witness_policy(top),
    )


def _parse_control_key(top: _Table) -> str | None:
    """``control_key``: the backend's control key as provisioning wrote it (a C2SP verifier key)."""
    return _verifier_key(top, "control_key", "a control key", "copy it from `meterchain backend "
                         "control-key show`, or provision again")


def _parse_log_key(top: _Table) -> str | None:
    """``log_key``: the log's verifier key (``name+hash+base64``), checked to parse."""
    return _verifier_key(top, "log_key", "a log key", "copy it from GET /api/v1/log/public-key, "
                         "or provision again")


def _verifier_key(top: _Table, name: str, what: str, fix: str) -> str | None:
    text = top.get(name, str, None)
    if text is None:
        return None
    from meterchain.contract.errors import MeterchainError
    from meterchain.contract.note import NoteVerifier

    try:
        NoteVerifier.parse(text)
    except MeterchainError as exc:
        raise top.error(name, f"not {what} ({exc}); {fix}") from None
    return text


def _parse_witness_policy(top: _Table) -> str | None:
    """``witness_policy``: the tlog-policy text provisioning gave (docs/witness.md)."""
    text = top.get("witness_policy", str, None)
    if text is None:
        return None
    from meterchain.contract.errors import MeterchainError
    from meterchain.contract.tlog_policy import parse_policy

    try:
        parse_policy(text)
    except MeterchainError as exc:
        raise top.error("witness_policy", f"not a witness policy ({exc}); provision again") from None
    return text


def _parse_homeassistant(top: _Table, raw: dict[str, Any], file: Path) -> HomeAssistantConfig | None:
    """``homeassistant_url = "mqtt://…"`` turns it on; ``[homeassistant]`` holds the details."""
    url = top.get("homeassistant_url", str, None)
    details = top.get("homeassistant", dict, {})
    if url is None:
        if details:
            raise top.error("homeassistant_url", "set it to turn on the [homeassistant] section")
        return None
    try:
        BrokerUrl.parse(url)
    except BrokerUrlError as exc:
        raise top.error("homeassistant_url", str(exc)) from None
    table = _Table(details, file, "homeassistant.", {"discovery_prefix", "guard_path"})
    return HomeAssistantConfig(
        url=url,
        discovery_prefix=table.get("discovery_prefix", str, "homeassistant"),
        guard_path=table.path("guard_path", None) if "guard_path" in details else None,
    )


def _parse_broker(raw: dict[str, Any], file: Path) -> BrokerConfig:
    table = _Table(
        raw,
        file,
        "broker.",
        {"url", "username", "password", "max_inflight", "batch_size", "ca_file", "cert_file", "key_file"},
    )
    url = table.get("url", str)
    tls = TlsFiles(*(table.path(key, None) if key in raw else None
                     for key in ("ca_file", "cert_file", "key_file")))
    try:
        address = BrokerUrl.parse(url, tls=tls)
        address = address.with_login(table.get("username", str, address.username),
                                     table.get("password", str, address.password))
    except BrokerUrlError as exc:
        raise table.error(exc.field, str(exc)) from None
    return BrokerConfig(
        address,
        max_inflight=table.integer("max_inflight", 1, 10_000, DEFAULT_MAX_INFLIGHT),
        batch_size=table.integer("batch_size", 1, 100_000, DEFAULT_BATCH_SIZE),
    )


def _parse_meter(raw: object, file: Path, index: int) -> MeterConfig:
    prefix = f"meters[{index}]."
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{file}: meters[{index}]: must be a table", file=str(file), key=f"meters[{index}]"
        )
    if raw.get("model") == "dlms":
        from meterchain.agent.dlms_config import parse_dlms_meter

        return parse_dlms_meter(raw, file, index)
    table = _Table(
        raw,
        file,
        prefix,
        {"name", "model", "port", "baudrate", "modbus_id", "serial", "timeout_seconds"},
    )
    model = table.get("model", str)
    if model not in METER_MODELS:
        raise table.error("model", f"{model!r} is not one of {', '.join(METER_MODELS)}")
    baudrate = table.get("baudrate", int)
    if baudrate not in BAUDRATES:
        raise table.error("baudrate", f"{baudrate} is not one of {', '.join(map(str, BAUDRATES))}")
    serial = table.get("serial", str, None)
    if serial is not None and not METER_SERIAL_RE.fullmatch(serial):
        raise table.error("serial", "must be 1-64 printable ASCII characters without spaces")
    timeout = float(table.get("timeout_seconds", (int, float), 1.0))
    if not 0.05 <= timeout <= 30:
        raise table.error("timeout_seconds", f"{timeout} is outside [0.05, 30]")
    name = table.get("name", str)
    if not name:
        raise table.error("name", "must not be empty")
    return MeterConfig(
        name=name,
        model=model,
        port=table.get("port", str),
        baudrate=baudrate,
        modbus_id=table.integer("modbus_id", 1, 247),
        serial=serial,
        timeout_seconds=timeout,
    )
