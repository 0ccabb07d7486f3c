"""Config keys of a ``model = "dlms"`` meter: addresses, password, profile, clock and backfill.

Parsed here rather than in config.py so the DLMS keys live in one place; config.py hands a
``[[meters]]`` table with ``model = "dlms"`` to :func:`parse_dlms_meter`. Errors name the file and
the key, like every other config error (docs/agent.md lists the keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meterchain.agent.config import BAUDRATES, ConfigError, MeterConfig, _Table
from meterchain.bridge.dlms.errors import DlmsError
from meterchain.bridge.dlms.obis import LOAD_PROFILE_OBIS, Obis
from meterchain.contract.reading import METER_SERIAL_RE

DLMS_KEYS = {
    "name",
    "model",
    "port",
    "baudrate",
    "serial",
    "timeout_seconds",
    "max_retries",
    "client_address",
    "server_address",
    "physical_address",
    "password",
    "password_file",
    "profile_obis",
    "clock_drift_threshold_seconds",
    "backfill_days",
    "backfill_batch_intervals",
}
DEFAULT_CLOCK_DRIFT_THRESHOLD_SECONDS = 30
DEFAULT_BACKFILL_DAYS = 7
DEFAULT_BACKFILL_BATCH_INTERVALS = 96  # one day of 15-minute entries: ≈ 3 s at 9600 baud


@dataclass(frozen=True, slots=True)
class DlmsSettings:
    """How to reach one DLMS meter and how much of its history to fetch."""

    client_address: int = 16  # the public client; 1 is the management client (LLS)
    server_address: int = 1  # HDLC upper address: the logical device
    physical_address: int | None = None  # HDLC lower address; None: a 1-byte server address
    password: str | None = field(default=None, repr=False)  # LLS; None: no authentication
    profile_obis: str = str(LOAD_PROFILE_OBIS)
    clock_drift_threshold_seconds: int = DEFAULT_CLOCK_DRIFT_THRESHOLD_SECONDS
    backfill_days: int = DEFAULT_BACKFILL_DAYS
    backfill_batch_intervals: int = DEFAULT_BACKFILL_BATCH_INTERVALS
    max_retries: int = 3


def parse_dlms_meter(raw: dict[str, Any], file: Path, index: int) -> MeterConfig:
    """A ``[[meters]]`` table of model ``dlms`` as a :class:`MeterConfig` with ``dlms`` set."""
    table = _Table(raw, file, f"meters[{index}].", DLMS_KEYS)
    name = table.get("name", str)
    if not name:
        raise table.error("name", "must not be empty")
    baudrate = table.get("baudrate", int, 9600)
    if baudrate not in BAUDRATES:
        raise table.error("baudrate", f"{baudrate} is not one of {', '.join(map(str, BAUDRATES))}")
    serial = table.get("serial", str, None)
    if serial is not None and not METER_SERIAL_RE.fullmatch(serial):
        raise table.error("serial", "must be 1-64 printable ASCII characters without spaces")
    timeout = float(table.get("timeout_seconds", (int, float), 2.0))
    if not 0.05 <= timeout <= 30:
        raise table.error("timeout_seconds", f"{timeout} is outside [0.05, 30]")
    profile_obis = table.get("profile_obis", str, str(LOAD_PROFILE_OBIS))
    try:
        obis = Obis.parse(profile_obis)
    except (DlmsError, ValueError):
        raise table.error(
            "profile_obis", f"{profile_obis!r} is not an OBIS code like 1-0:99.1.0.255"
        ) from None
    return MeterConfig(
        name=name,
        model="dlms",
        port=table.get("port", str),
        baudrate=baudrate,
        modbus_id=0,
        serial=serial,
        timeout_seconds=timeout,
        dlms=DlmsSettings(
            client_address=table.integer("client_address", 1, 0x7F, 16),
            server_address=table.integer("server_address", 0, 0x3FFF, 1),
            physical_address=(
                table.integer("physical_address", 0, 0x3FFF) if "physical_address" in raw else None
            ),
            password=_password(table, raw),
            profile_obis=str(obis),
            clock_drift_threshold_seconds=table.integer(
                "clock_drift_threshold_seconds", 1, 86_400, DEFAULT_CLOCK_DRIFT_THRESHOLD_SECONDS
            ),
            backfill_days=table.integer("backfill_days", 0, 366, DEFAULT_BACKFILL_DAYS),
            backfill_batch_intervals=table.integer(
                "backfill_batch_intervals", 1, 10_000, DEFAULT_BACKFILL_BATCH_INTERVALS
            ),
            max_retries=table.integer("max_retries", 0, 10, 3),
        ),
    )


def _password(table: _Table, raw: dict[str, Any]) -> str | None:
    """LLS password, inline or from a file (first line; keeps secrets out of the config)."""
    if "password" in raw and "password_file" in raw:
        raise table.error("password_file", "set password or password_file, not both")
    if "password_file" in raw:
        path = table.path("password_file")
        try:
            text = path.read_text(encoding="ascii")
        except OSError as exc:
            raise table.error("password_file", f"cannot read {path} ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise table.error("password_file", f"{path} is not ASCII text") from None
        lines = text.splitlines()
        password = lines[0] if lines else ""
    else:
        password = table.get("password", str, None)
        if password is None:
            return None
    if not password or len(password) > 64 or not password.isascii():
        raise table.error(
            "password_file" if "password_file" in raw else "password",
            "an LLS password is 1-64 ASCII characters",
        )
    return password


def check_dlms_ports(meters: tuple[MeterConfig, ...], file: Path) -> None:
    """DLMS meters may share a port (a multi-drop line) with each other, never with Modbus
    meters; on one line they answer at one speed and each at its own HDLC address."""
    for index, meter in enumerate(meters):
        if meter.dlms is None:
            continue
        key = f"meters[{index}]."
        for other_index, other in enumerate(meters):
            if other_index == index or other.port != meter.port:
                continue
            if other.dlms is None:
                raise _port_error(file, key + "port", f"{meter.port} is also used by Modbus meter"
                                  f" {other.name!r}; a line carries one protocol")
            if other_index > index:
                continue  # the later meter of the pair is the one named in the error
            if other.baudrate != meter.baudrate:
                raise _port_error(file, key + "baudrate", f"{meter.baudrate} differs from the"
                                  f" {other.baudrate} of meter {other.name!r} on {meter.port};"
                                  " meters on one line answer at one speed")
            if _hdlc(other.dlms) == _hdlc(meter.dlms):
                raise _port_error(file, key + "physical_address", f"meter {other.name!r} on"
                                  f" {meter.port} has the same HDLC address; give each meter on"
                                  " the line its own physical_address")


def _hdlc(settings: DlmsSettings) -> tuple[int, int | None]:
    """The server's HDLC address (upper, lower): what a meter on the line answers to."""
    return settings.server_address, settings.physical_address


def _port_error(file: Path, key: str, why: str) -> ConfigError:
    return ConfigError(f"{file}: {key}: {why}", file=str(file), key=key)
