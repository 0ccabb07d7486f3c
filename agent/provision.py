"""``meterchain agent provision``: enrol this gateway with an installer token, write its config.

The device key is made here and never leaves the gateway: only its public key goes to the
backend, with the gateway's identity (its machine id) and its outbox's next sequence number. The
backend answers the device id, the broker URL and this device's own broker login, and the log's
public key; this module then writes the agent config (mode 0600: it holds the broker password)
and ``provisioned.json`` (the record an installer keeps; ``agent check`` reads it).

Keys sit behind :class:`DeviceKeyStore` so a hardware secure element can replace the file later:
a new key is *prepared* beside the current one and *committed* only after the backend accepted
it, so a refused provisioning leaves the gateway exactly as it was.

First provisioning uses the key first boot made (``firstboot.sh``), if there is one; provisioning
again (a config exists) makes a new key, and the backend records a rotation: the old key stays
valid for every sequence number below the rotation point, the new one from there on.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meterchain.agent.outbox import NEXT_SEQ_SQL
from meterchain.contract.errors import MeterchainError
from meterchain.contract.signing import generate_private_key_pem, key_id, load_signer

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
RECORD_NAME = "provisioned.json"
HTTP_TIMEOUT = 20.0


class ProvisionError(MeterchainError):
    """Provisioning failed; ``hint`` says what the installer should do."""

    check = "provision"

    def __init__(self, message: str, *, hint: str, check: str | None = None, **context: object):
        super().__init__(message, check=check, **context)
        self.hint = hint


class DeviceKeyStore(Protocol):
    """Where the device key lives (a file today; a secure element later, same four calls)."""

    def current_public_key(self) -> bytes | None:
        """SPKI DER of the key in use, or None if there is none yet."""

    def prepare(self) -> bytes:
        """Make a new key beside the current one; its SPKI DER. The current key stays in use."""

    def commit(self) -> None:
        """The prepared key becomes the device key."""

    def discard(self) -> None:
        """Forget the prepared key."""


class FileKeyStore:
    """A PEM file, mode 0600, owned by the agent's user (``owner``) when run as root."""

    def __init__(self, path: Path, owner: str | None = None) -> None:
        self.path = path
        self.owner = owner
        self.pending = path.with_name(f".{path.name}.new")

    def current_public_key(self) -> bytes | None:
        try:
            return load_signer(self.path.read_bytes()).public_key_der
        except FileNotFoundError:
            return None
        except (OSError, MeterchainError, ValueError) as exc:
            raise ProvisionError(f"cannot use the device key {self.path}: {exc}",
                                 hint="remove the broken file, or fix its permissions") from None

    def prepare(self) -> bytes:
        from meterchain.agent.cli import write_private_key

        pem = generate_private_key_pem()
        self.pending.unlink(missing_ok=True)
        write_private_key(self.pending, pem, force=False)
        self._chown(self.pending)
        return load_signer(pem).public_key_der

    def commit(self) -> None:
        os.replace(self.pending, self.path)

    def discard(self) -> None:
        self.pending.unlink(missing_ok=True)

    def _chown(self, path: Path) -> None:
        if self.owner and os.geteuid() == 0:
            entry = pwd.getpwnam(self.owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def machine_identity() -> str:
    """The gateway's identity: systemd's machine id (unique per installed system)."""
    for path in MACHINE_ID_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    raise ProvisionError("this system has no machine id", hint="pass --identity (any unique text)")


def outbox_state(path: Path) -> tuple[str, int] | None:
    """(device, next seq) of an existing outbox, read without changing it; None if none."""
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT device FROM state").fetchone()
            nxt = db.execute(NEXT_SEQ_SQL).fetchone() if row else None
    except sqlite3.Error:
        return None
    return (str(row[0]), int(nxt[0])) if row and nxt else None


def post_json(url: str, body: dict[str, Any], timeout: float = HTTP_TIMEOUT) -> dict[str, Any]:
    """POST JSON; a refusal raises ProvisionError with the backend's own detail and hint."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            problem = json.loads(exc.read())
        except ValueError:
            problem = {}
        raise ProvisionError(
            f"the backend refused: {problem.get('detail') or exc.reason} (HTTP {exc.code})",
            check=problem.get("error", "http"), hint=problem.get("hint") or
            "check the backend URL (it must be the backend's API, not the broker)",
            status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProvisionError(
            f"cannot reach the backend at {url}: {reason}", check="no-network",
            hint="check the URL, the gateway's network (ip route; ping the backend host) and DNS")\
            from None
    except ValueError:
        raise ProvisionError(f"the answer from {url} is not JSON", check="http",
                             hint="check the backend URL") from None


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    device: str
    event: str
    key_id: str
    valid_from: int
    config_path: Path
    record_path: Path
    broker_url: str
    moved_outbox: Path | None = None


def provision(*, backend_url: str, token: str, config_path: Path, keys: DeviceKeyStore,
              key_path: Path, outbox_path: Path, identity: str, device: str | None = None,
              meters_file: Path | None = None, new_key: bool = False,
              owner: str | None = None) -> ProvisionResult:
    """Provision against ``backend_url``; write the config and the record on success."""
    existing = _read_toml(config_path) if config_path.exists() else {}
    meters = _read_toml(meters_file).get("meters") if meters_file else existing.get("meters")
    state = outbox_state(outbox_path)
    current = keys.current_public_key()
    rotate = new_key or current is None or bool(existing)
    public_key = keys.prepare() if rotate else current
    assert public_key is not None
    body = {"token": token.strip(), "public_key": _b64(public_key), "identity": identity,
            "next_seq": state[1] if state else 1}
    if device:
        body["device"] = device
    try:
        answer = post_json(backend_url.rstrip("/") + "/api/v1/provision", body)
        if answer.get("key_id") != key_id(public_key).hex():
            raise ProvisionError("the backend answered for another key", check="http",
                                 hint="check the backend URL")
    except BaseException:
        if rotate:
            keys.discard()
        raise
    if rotate:
        keys.commit()
    moved = None
    if state is not None and state[0] != answer["device"]:  # an outbox of another device id
        moved = outbox_path.with_name(f"{outbox_path.name}.{state[0]}.{int(time.time())}")
        os.replace(outbox_path, moved)
    document = agent_config_document(existing, answer, backend_url=backend_url.rstrip("/"),
                                     key_path=key_path, outbox_path=outbox_path,
                                     config_dir=config_path.parent, meters=meters)
    _write_private(config_path, toml_text(document), owner)
    record = {k: answer[k] for k in ("device", "event", "key_id", "valid_from", "scope",
                                     "broker_url", "log_public_key", "witness_policy")}
    record |= {"control_key": answer.get("control_key") or None,
               "backend_url": backend_url.rstrip("/"), "identity": identity,
               "provisioned_at": int(time.time())}
    record_path = config_path.with_name(RECORD_NAME)
    _write_private(record_path, json.dumps(record, indent=2) + "\n", owner, mode=0o644)
    return ProvisionResult(answer["device"], answer["event"], answer["key_id"],
                           answer["valid_from"], config_path, record_path, answer["broker_url"],
                           moved)


def agent_config_document(existing: dict[str, Any], answer: dict[str, Any], *, backend_url: str,
                          key_path: Path, outbox_path: Path, config_dir: Path,
                          meters: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The agent config: what the backend decided, over whatever the installer had set."""
    document = dict(existing)
    document.update(device_id=answer["device"], backend_url=backend_url,
                    key_path=_as_written(key_path, config_dir))
    document.setdefault("outbox_path", _as_written(outbox_path, config_dir))
    broker = dict(existing.get("broker", {}))
    broker.update(url=answer["broker_url"], username=answer["broker_username"],
                  password=answer["broker_password"])
    document["broker"] = broker
    if answer.get("control_key"):  # acks are verified with it (docs/agent.md, "Signed acks")
        document["control_key"] = answer["control_key"]
    # Receipts are verified with these (docs/agent.md, "Receipts"); a backend without witnesses
    # sends no policy, and an old one remains only if the answer does not say.
    if answer.get("log_public_key"):
        document["log_key"] = answer["log_public_key"]
    if answer.get("witness_policy"):
        document["witness_policy"] = answer["witness_policy"]
    elif "log_public_key" in answer:
        document.pop("witness_policy", None)
    document.pop("meters", None)
    if meters:
        document["meters"] = meters
    return document


def _as_written(path: Path, config_dir: Path) -> str:
    """A path as the config should hold it: relative to the config's folder when inside it (the
    agent resolves relative paths there), absolute otherwise."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(config_dir.resolve()))
    except ValueError:
        return str(absolute)


def toml_text(document: dict[str, Any]) -> str:
    """TOML for a config: scalars, lists of scalars, tables and arrays of tables."""
    lines: list[str] = []
    _emit(document, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _emit(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    nested: list[tuple[str, Any, bool]] = []  # (key, a table or an array of tables, is it an array)
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.append((key, value, True))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value, array in nested:
        name = ".".join(_key(k) for k in [*path, key])
        for item in (value if array else [value]):
            lines.extend(["", f"[[{name}]]" if array else f"[{name}]"])
            _emit(item, [*path, key], lines)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() \
        else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (\uXXXX escapes alike)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ProvisionError(f"cannot write {value!r} to TOML", hint="report this as a bug")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(f"cannot read {path}: {exc}",
                             hint="fix or remove the file (agent scan --out writes meters)") from None


def _write_private(path: Path, text: str, owner: str | None, mode: int = 0o600) -> None:
    """Write beside and rename over, with the mode set before any byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        if owner and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _b64(der: bytes) -> str:
    import base64

    return base64.b64encode(der).decode()
