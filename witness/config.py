"""The witness's one config file (TOML), and its key file.

```toml
key_file = "witness.key"        # PRIVATE+KEY+<name>+<hash>+<base64>, from `meterchain witness init`
db = "witness.db"               # SQLite, created on first start; or "postgresql://user@host/db"
listen = "127.0.0.1:7380"       # host:port of the HTTP service
prefix = ""                     # submission and monitoring prefix, e.g. "/witness"
logs = ["<log vkey>", ...]      # the logs it witnesses (Ed25519 note keys; origin = key name)
```

Relative paths are relative to the config file's folder. The witness's name is its key's name.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meterchain.contract.cosignature import Cosigner
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteVerifier

_KEYS = {"key_file", "db", "listen", "prefix", "logs"}


class WitnessConfigError(MeterchainError):
    """The config file or key file is unusable (``path`` names it)."""

    check = "config"


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    cosigner: Cosigner
    db: Path | str  # a SQLite file, or a PostgreSQL URL (store_pg.py)
    host: str
    port: int
    prefix: str
    logs: Mapping[str, tuple[NoteVerifier, ...]]


def load_config(path: Path) -> WitnessConfig:
    def bad(message: str) -> WitnessConfigError:
        return WitnessConfigError(f"{path}: {message}", path=str(path))

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise bad(f"cannot read: {exc}") from None
    unknown = set(doc) - _KEYS
    if unknown:
        raise bad(f"unknown settings {sorted(unknown)} (known: {sorted(_KEYS)})")
    base = path.parent

    def text(name: str, default: str | None = None) -> str:
        value = doc.get(name, default)
        if not isinstance(value, str):
            raise bad(f"{name} must be text")
        return value

    key_path = base / text("key_file", "witness.key")
    try:
        cosigner = Cosigner.parse(key_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise bad(f"cannot read key file {key_path}: {exc.strerror}") from None
    except MeterchainError as exc:
        raise bad(f"key file {key_path}: {exc}") from None
    host, _, port = text("listen", "127.0.0.1:7380").rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise bad("listen must be host:port")
    prefix = text("prefix", "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise bad("prefix must start with '/'")
    raw_logs = doc.get("logs", [])
    if not isinstance(raw_logs, list) or not raw_logs or not all(isinstance(v, str) for v in raw_logs):
        raise bad("logs must be a non-empty list of log vkeys")
    logs: dict[str, tuple[NoteVerifier, ...]] = {}
    for vkey in raw_logs:
        try:
            verifier = NoteVerifier.parse(vkey)
        except MeterchainError as exc:
            raise bad(f"log key {vkey[:40]!r}: {exc}") from None
        logs[verifier.name] = (*logs.get(verifier.name, ()), verifier)
    db = text("db", "witness.db")
    return WitnessConfig(cosigner, db if is_postgres(db) else base / db, host.strip("[]"), int(port), prefix, logs)


def is_postgres(db: Path | str) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def write_new(directory: Path, name: str, logs: list[str], listen: str) -> tuple[Path, Cosigner]:
    """A new key (mode 0600) and config in ``directory``; refuses to overwrite either."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, config_path = directory / "witness.key", directory / "witness.toml"
    for existing in (key_path, config_path):
        if existing.exists():
            raise WitnessConfigError(f"{existing} exists; not overwriting a witness", path=str(existing))
    for vkey in logs:
        NoteVerifier.parse(vkey)
    cosigner = Cosigner.generate(name)
    with open(key_path, "x", encoding="utf-8", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
        fh.write(str(cosigner) + "\n")
    listed = "".join(f'    "{vkey}",\n' for vkey in logs)
    config_path.write_text(
        "# meterchain witness (docs/witness.md)\n"
        'key_file = "witness.key"\n'
        'db = "witness.db"\n'
        f'listen = "{listen}"\n'
        'prefix = ""\n'
        f"logs = [\n{listed}]\n", encoding="utf-8")
    return config_path, cosigner
