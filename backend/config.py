"""Backend configuration: a TOML file, environment overrides, or flags; one dataclass."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit

from meterchain.contract.errors import MeterchainError


class ConfigError(MeterchainError):
    check = "config"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user:pass@]host:port`` (port defaults to 1883)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError(f"broker URL {url!r} must look like mqtt://[user:pass@]host:port", url=url)
    try:
        port = parts.port or 1883
    except ValueError:
        raise ConfigError(f"broker URL {url!r} has a bad port", url=url) from None
    return BrokerAddress(
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
    )


@dataclass(slots=True)
class BackendConfig:
    """Everything ``meterchain backend serve`` needs. Secrets may come from the environment:
    ``MC_ADMIN_TOKEN`` and ``MC_BROKER_URL`` override the file."""

    db: str = "meterchain.db"
    broker: str = "mqtt://127.0.0.1:1883"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_key: str = "log.key"
    origin: str = "meterchain.local/log"
    admin_token: str = ""
    client_id: str = "meterchain-backend"
    seal_interval: float = 5.0
    seal_max_leaves: int = 10_000
    batch_size: int = 1000
    verify_threads: int = 2
    settle_every: float = 5.0  # seconds between settlement passes (backend/settlement.py)
    # Commissioning (backend/provisioning.py, docs/installer-guide.md):
    gateway_broker_url: str = ""  # the broker as gateways reach it; empty: no provisioning
    mosquitto_passwd_file: str = ""  # keep each device's login line in this password file
    broker_reload_command: str = ""  # run after that file changed, e.g. "systemctl reload mosquitto"
    public_url: str = ""  # the backend's URL as installers reach it (in tokens' QR codes)
    extra: dict[str, object] = field(default_factory=dict)

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
        parse_broker_url(config.broker)
        return config
