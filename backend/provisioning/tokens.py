"""Commissioning gateways: one-time installer tokens, and provisioning a gateway with one.

A utility or community issues an installer token (scoped to it, expiring, usable once). The
installer runs ``meterchain agent provision --backend URL --token T`` on the gateway, which makes
its key there and sends only the public key with the gateway's identity (its machine id). The
backend then, for that token:

- enrols a new device (a device leaf, key valid from sequence 1), or, if this identity was
  provisioned before, rotates its key (a device leaf; the old key stays valid below the rotation
  point, which is past every reading the gateway has signed or the backend has stored);
- generates the device's broker password, keeps only its Mosquitto PBKDF2-SHA512 hash, writes
  the Mosquitto password-file line when a file is configured, and returns the password once;
- answers the device id, broker URL and login, and the log's public key.

A token fails with a reason an installer can act on: ``unknown-token``, ``token-expired``,
``token-used`` (with when and for which device), ``wrong-scope`` (the gateway belongs to another
utility or community). A scope is ``(kind, id)``, kind ``utility`` or ``community``; a token is
issued only for one registered in the parties tables (``utilities``, ``communities``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import secrets
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from meterchain.backend.devices import registry
from meterchain.backend.ingest.control_key import public_control_key
from meterchain.backend.provisioning.tables import (
    GatewayRow,
    ProvisioningTables,
    TokenRow,
    token_hash,
)
from meterchain.backend.store import SqliteStore
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_time
from meterchain.contract.leaves import DeviceLeaf
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT
from meterchain.contract.tlog_policy import parse_policy

if TYPE_CHECKING:
    from meterchain.backend.config import BackendConfig

log = logging.getLogger(__name__)

SCOPE_KINDS = ("utility", "community")
SCOPE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
IDENTITY_RE = re.compile(r"[\x21-\x7e]{8,128}")  # printable ASCII, no spaces (a machine id: 32 hex)
TOKEN_PREFIX = "mct_"
DEFAULT_TOKEN_TTL = 7 * 86_400
MAX_TOKEN_TTL = 90 * 86_400
# Mosquitto 2.x password files: "$7$" = PBKDF2-HMAC-SHA512, 12-byte salt, 101 iterations by
# default (mosquitto_passwd); the line is "username:$7$iterations$salt_b64$hash_b64".
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12


class ProvisioningError(MeterchainError):
    """Provisioning or token issue refused; ``check`` is the reason code the API answers."""

    check = "provisioning"

    def __init__(self, message: str, *, check: str, hint: str, status: int = 400,
                 **context: object) -> None:
        super().__init__(message, check=check, **context)
        self.hint, self.status = hint, status


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str
    id: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``utility:ID`` or ``community:ID``."""
        kind, _, ident = text.partition(":")
        return cls.of(kind, ident)

    @classmethod
    def of(cls, kind: str, ident: str) -> Scope:
        if kind not in SCOPE_KINDS or not SCOPE_ID_RE.fullmatch(ident or ""):
            raise ProvisioningError(
                f"scope {kind}:{ident} is not utility:ID or community:ID",
                check="invalid-scope", hint="ID is 1-64 of A-Z a-z 0-9 . _ - (e.g. utility:swx)",
                scope=f"{kind}:{ident}",
            )
        return cls(kind, ident)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class ProvisioningSettings:
    """What the backend hands to gateways and how it tells the broker about them."""

    broker_url: str = ""  # what gateways connect to, without credentials (mqtt:// or mqtts://)
    passwd_file: Path | None = None  # Mosquitto password file to keep the device's line in
    reload_command: tuple[str, ...] = ()  # run after the file changed, e.g. systemctl reload
    public_url: str = ""  # the backend's URL as installers reach it (for QR codes)
    witness_policy: str | None = None  # the tlog-policy file's text (docs/witness.md); None: no witnesses
    control_key: str = ""  # verifies the backend's acks (backend/ingest/control_key.py)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    scope: Scope
    expires: int
    note: str


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    token: str
    public_key: bytes  # PEM, DER or base64 DER
    identity: str
    device: str | None = None  # requested id; default derived from the identity
    next_seq: int = 1  # the gateway's next sequence number (its outbox), for a rotation point


@dataclass(frozen=True, slots=True)
class Provisioned:
    device: str
    leaf: DeviceLeaf
    scope: Scope
    broker_username: str
    broker_password: str = field(repr=False)
    passwd_line: str = field(repr=False)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def mosquitto_password_hash(password: str, salt: bytes | None = None,
                            iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """The hash ``mosquitto_passwd`` writes for ``password`` (``$7$`` PBKDF2-SHA512)."""
    salt = os.urandom(MOSQUITTO_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def device_id_for(identity: str) -> str:
    """A stable device id for a gateway identity (so re-provisioning finds the same device)."""
    return "gw-" + hashlib.sha256(identity.encode()).hexdigest()[:12]


async def issue_token(store: SqliteStore, scope: Scope, now: int, *,
                      ttl: int = DEFAULT_TOKEN_TTL, note: str = "") -> IssuedToken:
    """A one-time installer token for ``scope``, valid for ``ttl`` seconds."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= MAX_TOKEN_TTL:
        raise ProvisioningError(f"token lifetime {ttl} s is outside [60, {MAX_TOKEN_TTL}]",
                                check="invalid-ttl", hint="give a lifetime of 1 minute to 90 days")
    tables = ProvisioningTables(store)
    if not await tables.scope_exists(scope.kind, scope.id):
        raise ProvisioningError(f"no {scope.kind} {scope.id!r} is registered", check="unknown-scope",
                                status=404, scope=str(scope),
                                hint="register it first (meterchain backend access …) or check the id")
    token = new_token()
    await tables.add_token(
        TokenRow(token_hash(token), scope.kind, scope.id, note[:200], now, now + ttl, None, None))
    return IssuedToken(token, scope, now + ttl, note[:200])


async def provision(store: SqliteStore, request: ProvisionRequest, now: int,
                    settings: ProvisioningSettings) -> Provisioned:
    """Enrol or re-key the gateway named by ``request.identity`` with a one-time token."""
    tables = ProvisioningTables(store)
    if not IDENTITY_RE.fullmatch(request.identity or ""):
        raise ProvisioningError("gateway identity must be 8-128 printable ASCII characters",
                                check="invalid-identity",
                                hint="send the machine id (/etc/machine-id) or --identity")
    token = await _usable_token(tables, request.token, now)
    scope = Scope(token.scope_kind, token.scope_id)
    existing = await tables.gateway_by_identity(request.identity)
    device = _device_for(request, existing)
    if existing is not None and (existing.scope_kind, existing.scope_id) != (scope.kind, scope.id):
        raise ProvisioningError(
            f"gateway {device} belongs to {existing.scope_kind}:{existing.scope_id}, this token "
            f"to {scope}", check="wrong-scope", status=403, device=device,
            hint=f"ask {existing.scope_kind}:{existing.scope_id} for an installer token")
    if existing is None and await tables.gateway(device) is not None:
        raise ProvisioningError(f"device id {device} is taken by another gateway",
                                check="device-taken", status=409, device=device,
                                hint="leave --device-id out (the id then follows the identity)")
    if not await tables.claim_token(request.token, device, now):  # another request won
        await _usable_token(tables, request.token, now)
        raise ProvisioningError("this installer token is being used right now", check="token-used",
                                status=401, hint="tokens work once: ask for a new one")
    try:
        leaf = await _write_key(store, tables, request, device, existing is not None, now)
    except BaseException:
        await tables.release_token(request.token, device)
        raise
    password = secrets.token_urlsafe(24)
    password_hash = mosquitto_password_hash(password)
    await tables.save_gateway(GatewayRow(device, request.identity, scope.kind, scope.id, device,
                                         password_hash, now, now))
    line = f"{device}:{password_hash}"
    if settings.passwd_file is not None:
        await asyncio.to_thread(write_passwd_line, settings.passwd_file, device, password_hash)
        if settings.reload_command:
            await asyncio.to_thread(_reload_broker, settings.reload_command)
    log.info("event=provisioned device=%s scope=%s leaf=%s valid_from=%d", device, scope,
             leaf.event.value, leaf.valid_from)
    return Provisioned(device, leaf, scope, device, password, line)


async def _usable_token(tables: ProvisioningTables, token: str, now: int) -> TokenRow:
    row = await tables.token(token) if token.startswith(TOKEN_PREFIX) else None
    if row is None:
        raise ProvisioningError("this installer token is not known to this backend",
                                check="unknown-token", status=401,
                                hint="check the token (mct_…) and the backend URL it came with")
    if row.used_at is not None:
        raise ProvisioningError(
            f"this installer token was already used at {human_time(row.used_at)} for {row.used_by}",
            check="token-used", status=401, used_by=row.used_by,
            hint="tokens work once: ask the utility for a new one")
    if row.expires <= now:
        raise ProvisioningError(f"this installer token expired at {human_time(row.expires)}",
                                check="token-expired", status=401, expired=row.expires,
                                hint="ask the utility for a new token (and check the gateway's clock)")
    return row


def _device_for(request: ProvisionRequest, existing: GatewayRow | None) -> str:
    device = request.device or (existing.device if existing else device_id_for(request.identity))
    if not DEVICE_ID_RE.fullmatch(device):
        raise ProvisioningError("device id must be 1-64 of A-Z a-z 0-9 . _ -",
                                check="invalid-device", hint="leave --device-id out", device=device)
    if existing is not None and existing.device != device:
        raise ProvisioningError(
            f"this gateway was provisioned as {existing.device}, not {device}",
            check="device-mismatch", status=409, device=existing.device,
            hint=f"re-provision with --device-id {existing.device} or without --device-id")
    return device


async def _write_key(store: SqliteStore, tables: ProvisioningTables, request: ProvisionRequest,
                     device: str, known: bool, now: int) -> DeviceLeaf:
    """Enrol a new device, or rotate: the new key from past every seq signed or stored."""
    try:
        if not known:
            return await registry.enrol(store, device, request.public_key, now)
        if isinstance(request.next_seq, bool) or not 1 <= request.next_seq <= MAX_SAFE_INT:
            raise ProvisioningError("next_seq must be in [1, 2^53-1]", check="invalid-request",
                                    hint="send the outbox's next sequence number")
        start = max(request.next_seq, await tables.highest_seq(device) + 1)
        return await registry.rotate(store, device, request.public_key, now, start)
    except registry.RegistryError as exc:
        raise ProvisioningError(str(exc), check="registry", status=409, device=device,
                                hint="a revoked gateway needs a new device id (--device-id)"
                                if "revoked" in str(exc) else "see the detail") from None
    except MeterchainError as exc:  # a bad public key
        raise ProvisioningError(str(exc), check="invalid-key", device=device,
                                hint="send a P-256 public key (SPKI, PEM or base64 DER)") from None


def write_passwd_line(path: Path, username: str, password_hash: str) -> None:
    """Replace (or add) ``username``'s line in a Mosquitto password file, atomically."""
    lines = []
    if path.exists():
        lines = [line for line in path.read_text().splitlines()
                 if line and line.split(":", 1)[0] != username]
    lines.append(f"{username}:{password_hash}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if path.exists():
        st = path.stat()
        os.chmod(tmp, st.st_mode & 0o777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def _reload_broker(command: tuple[str, ...]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        log.error("event=broker_reload_failed command=%r status=%d stderr=%r", command,
                  result.returncode, result.stderr[-500:])


def settings_from_config(config: BackendConfig) -> ProvisioningSettings:
    """Provisioning settings from ``[backend]``: gateway_broker_url, mosquitto_passwd_file, …"""
    if config.gateway_broker_url:
        parts = urlsplit(config.gateway_broker_url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.username:
            raise ProvisioningError(
                f"gateway_broker_url {config.gateway_broker_url!r} must be mqtt(s)://host[:port]"
                " without credentials", check="config", hint="each gateway gets its own login")
    return ProvisioningSettings(
        broker_url=config.gateway_broker_url,
        passwd_file=Path(config.mosquitto_passwd_file) if config.mosquitto_passwd_file else None,
        reload_command=tuple(shlex.split(config.broker_reload_command)),
        public_url=config.public_url.rstrip("/"),
        control_key=public_control_key(config.control_key_path()),
        witness_policy=(parse_policy(Path(config.witness_policy).read_text(encoding="utf-8")).to_text()
                        if config.witness_policy else None),
    )
