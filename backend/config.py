"""Backend configuration: a TOML file, environment overrides, or flags; one dataclass."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from meterchain.contract.errors import MeterchainError
from meterchain.mqtt import BrokerUrl, BrokerUrlError, redact, unique_client_id

#: What one ``serve`` process can run (docs/backend.md, "Scale-out"): ``ingest`` (MQTT → store →
#: ack), ``sealer`` (the sealer, the settlement runner and the webhook worker: the parts that must
#: run exactly once per log) and ``api`` (HTTP API, dashboard, live telemetry).
ROLES = ("ingest", "sealer", "api")
#: An MQTT 5 share name: at least one character, none of ``/ + #`` (MQTT 5 §4.8.2).
_SHARE_NAME = re.compile(r"[^/+#\s]{1,64}")


class ConfigError(MeterchainError):
    check = "config"


def parse_roles(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"all"``, ``"ingest"``, ``"sealer,api"`` or a list of those: the roles, in ROLES order."""
    if not isinstance(value, (str, list, tuple, set, frozenset)):
        raise ConfigError(f"roles must be a string or a list of strings, not {value!r}")
    items = [value] if isinstance(value, str) else list(value)
    parts = (part.strip().lower() for item in items for part in str(item).split(","))
    names = {part for part in parts if part}
    if "all" in names:
        names = (names - {"all"}) | set(ROLES)
    unknown = sorted(names - set(ROLES))
    if unknown or not names:
        raise ConfigError(
            f"roles {sorted(names) or value!r} must name one or more of "
            f"{', '.join(ROLES)} (or all)",
            roles=str(value),
        )
    return tuple(role for role in ROLES if role in names)


def broker_address(url: str) -> BrokerUrl:
    """The broker of ``url``; a :class:`ConfigError` (without the password) if it is malformed."""
    try:
        return BrokerUrl.parse(url)
    except BrokerUrlError as exc:
        raise ConfigError(str(exc), url=redact(url)) from None


@dataclass(slots=True)
class BackendConfig:
    """Everything ``meterchain backend serve`` needs. Secrets may come from the environment:
    ``MC_ADMIN_TOKEN`` and ``MC_BROKER_URL`` override the file."""

    db: str = "meterchain.db"
    broker: str = "mqtt://127.0.0.1:1883"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_key: str = "log.key"
    # Signs every ack (backend/ingest/control_key.py); the sealer creates it. "": control.key
    # beside log_key.
    control_key: str = ""
    origin: str = "meterchain.local/log"
    admin_token: str = ""
    client_id: str = "meterchain-backend"
    seal_interval: float = 5.0  # the upper bound between seals
    seal_max_leaves: int = 10_000
    # Seconds the sealer waits after a commit for more to join its seal (0: the timer only).
    seal_coalesce: float = 0.05
    batch_size: int = 1000
    verify_threads: int = 2
    # Processes that check readings (parse, verify, pack) beside the one that reads MQTT and
    # commits; 0: check in verify_threads threads instead (docs/backend.md, "Checking").
    check_processes: int = 1
    settle_every: float = 5.0  # seconds between settlement passes (backend/settlement/runner.py)
    # Scale-out (docs/backend.md, "Scale-out"): the parts this process runs, and the MQTT 5 share
    # group its ingest subscribes in ("" = plain subscriptions, one ingest per broker).
    roles: tuple[str, ...] = ROLES
    share_group: str = ""
    # Commissioning (backend/provisioning/tokens.py, docs/installer-guide.md):
    gateway_broker_url: str = ""  # the broker as gateways reach it; empty: no provisioning
    mosquitto_passwd_file: str = ""  # keep each device's login line in this password file
    broker_reload_command: str = ""  # run after that file changed, e.g. "systemctl reload mosquitto"
    public_url: str = ""  # the backend's URL as installers reach it (in tokens' QR codes)
    # Witnesses (docs/witness.md): a C2SP tlog-policy file; the sealer asks each witness with a
    # URL to cosign every checkpoint (waiting at most witness_timeout s), gateways get the file.
    witness_policy: str = ""
    witness_timeout: float = 2.0
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.roles = parse_roles(self.roles)
        if not isinstance(self.check_processes, int) or self.check_processes < 0:
            raise ConfigError(f"check_processes must be 0 (threads) or more, not {self.check_processes!r}",
                              check_processes=self.check_processes)
        if self.share_group and not _SHARE_NAME.fullmatch(self.share_group):
            raise ConfigError(
                f"share_group {self.share_group!r} must be 1-64 characters without / + # or spaces",
                share_group=self.share_group,
            )

    def control_key_path(self) -> str:
        """The control key's file: ``control_key``, or ``control.key`` beside the log key."""
        return self.control_key or str(Path(self.log_key).with_name("control.key"))

    def worker_client_id(self) -> str:
        """The ingest's MQTT client id. In a share group every worker needs its own, so it is
        ``<client_id>-<hostname>-<pid>`` there; otherwise ``client_id`` as configured."""
        if not self.share_group:
            return self.client_id
        return unique_client_id(self.client_id)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: object) -> BackendConfig:
        values: dict[str, object] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config {path}: {exc}", path=str(path)) from None
            values.update(data.get("backend", data))
        env = {"admin_token": "MC_ADMIN_TOKEN", "broker": "MC_BROKER_URL"}
        for name, var in env.items():
            if os.environ.get(var):
                values[name] = os.environ[var]
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown backend settings {unknown}; known: {sorted(known)}")
        config = cls(**values)  # type: ignore[arg-type]
        broker_address(config.broker)
        return config
