"""Who may see which readings: parties, metering points, bindings over time, API keys (pure code).

The hierarchy is utility → community → household; a **metering point** (a German MaLo/MeLo id or
free text) is registered to one utility and perhaps one community. What measures it changes over
time, and so does who lives there, so both are **bindings** with a validity period
``[valid_from, valid_to)`` in UTC seconds (``valid_to`` ``None`` = open):

- a *meter binding* ties a metering point to a meter ``(device, meter serial)``; a reading
  ``(device, meter, end)`` belongs to the metering point whose meter binding covers ``end``;
- an *occupancy* ties a metering point to a household; the household sees the readings whose
  ``end`` its occupancy covers, so a household that moved out does not see its successor's.

Neither a meter nor a metering point may have two meter bindings at once, nor a metering point
two occupancies at once: overlaps are refused (:class:`BindingOverlap`).

API keys are random 256-bit tokens shown once and stored only as SHA-256: for a high-entropy
token a fast hash is enough (nobody can brute-force 2^256), so no password hashing is needed.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
import secrets
from dataclasses import dataclass

from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_time
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT, METER_SERIAL_RE

#: Ids of utilities, communities, households, grants and metering points: a letter or digit, then
#: up to 63 letters, digits and ``. _ : -`` (a MaLo "12345678901", a MeLo "DE000…", or free text).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"  # anchored for OpenAPI; we fullmatch
_ID = re.compile(ID_PATTERN)
#: Device ids and meter serials follow the reading's own rules (docs/format.md §2).
DEVICE_PATTERN = f"^{DEVICE_ID_RE.pattern}$"
_DEVICE = re.compile(DEVICE_PATTERN)
METER_PATTERN = f"^{METER_SERIAL_RE.pattern}$"
_METER = re.compile(METER_PATTERN)
NAME_MAX = 200
TOKEN_PREFIX = "mck_"


class PartyError(MeterchainError):
    """A party, binding, grant or key operation was refused."""

    check = "parties"


class InvalidParty(PartyError):
    """A field is malformed or out of bounds."""

    check = "invalid"


class UnknownParty(PartyError):
    """A referenced utility, community, household, metering point, grant or key does not exist."""

    check = "not-found"


class PartyExists(PartyError):
    """The id is taken."""

    check = "exists"


class BindingOverlap(PartyError):
    """A binding would overlap another of the same meter or metering point."""

    check = "overlap"


class PointKind(enum.Enum):
    """What a metering point measures."""

    CONSUMPTION = "consumption"
    GENERATION = "generation"  # PV and other generators
    HEAT_PUMP = "heat-pump"
    EV_CHARGER = "ev-charger"
    BATTERY = "battery"
    OTHER = "other"


class KeyKind(enum.Enum):
    """Whose key it is; the subject id names the utility, household or grant (admin: 'admin')."""

    ADMIN = "admin"
    UTILITY = "utility"
    HOUSEHOLD = "household"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class Utility:
    id: str
    name: str
    created: int


@dataclass(frozen=True, slots=True)
class Community:
    id: str
    utility: str
    name: str
    created: int


@dataclass(frozen=True, slots=True)
class Household:
    id: str
    community: str
    name: str
    created: int


@dataclass(frozen=True, slots=True)
class MeteringPoint:
    id: str
    utility: str
    community: str | None
    kind: PointKind
    created: int


@dataclass(frozen=True, slots=True)
class MeterBinding:
    """``(device, meter)`` measures ``metering_point`` for readings ending in [from, to)."""

    id: int
    metering_point: str
    device: str
    meter: str
    valid_from: int
    valid_to: int | None


@dataclass(frozen=True, slots=True)
class Occupancy:
    """``household`` holds ``metering_point`` for readings ending in [from, to)."""

    id: int
    metering_point: str
    household: str
    valid_from: int
    valid_to: int | None


@dataclass(frozen=True, slots=True)
class Grant:
    """An auditor's view: these metering points and every point of these communities, until
    ``expires``."""

    id: str
    label: str
    expires: int
    metering_points: tuple[str, ...]
    communities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored (never the token): revoked and expired keys authenticate nobody."""

    id: str
    kind: KeyKind
    subject: str
    label: str
    created: int
    expires: int | None
    revoked: int | None
    last_used: int | None
    replaces: str | None

    def refusal(self, now: int) -> str | None:
        """Why this key is not valid at ``now``, or ``None`` if it is."""
        if self.revoked is not None and self.revoked <= now:
            return f"key {self.id} was revoked at {human_time(self.revoked)}"
        if self.expires is not None and self.expires <= now:
            return f"key {self.id} expired at {human_time(self.expires)}"
        return None


class Scope(enum.Enum):
    READ = "read"  # reading data, within the principal's metering points
    ADMIN = "admin"  # everything, including parties, keys and devices


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, resolved from the bearer token: what kind, which subject, what scopes."""

    kind: KeyKind
    id: str
    scopes: frozenset[Scope]
    key_id: str | None = None  # None for the configured admin token (the root principal)

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @classmethod
    def root(cls) -> Principal:
        return cls(KeyKind.ADMIN, "root", frozenset(Scope), None)

    @classmethod
    def of_key(cls, key: ApiKey) -> Principal:
        scopes = frozenset(Scope) if key.kind is KeyKind.ADMIN else frozenset({Scope.READ})
        return cls(key.kind, key.subject, scopes, key.id)


# ------------------------------------------------------------------------ validation


def check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidParty(f"{what} id must match {ID_PATTERN}", field=what, value=str(value)[:80])
    return value


def check_device(value: object) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise InvalidParty(f"device id must match {DEVICE_PATTERN}", value=str(value)[:80])
    return value


def check_meter(value: object) -> str:
    if not isinstance(value, str) or not _METER.fullmatch(value):
        raise InvalidParty("meter serial must be 1 to 64 printable ASCII characters, no spaces",
                           value=str(value)[:80])
    return value


def check_name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or len(value) > NAME_MAX or any(ord(c) < 32 for c in value):
        raise InvalidParty(f"{what} must be text of at most {NAME_MAX} characters, no control "
                           "characters", field=what)
    return value


def check_time(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INT:
        raise InvalidParty(f"{what} must be UTC seconds in [0, 2^53 - 1]", field=what,
                           value=str(value)[:40])
    return value


def check_period(valid_from: object, valid_to: object) -> tuple[int, int | None]:
    """A validity period [from, to): ``to`` is ``None`` (open) or later than ``from``."""
    start = check_time(valid_from, "valid_from")
    if valid_to is None:
        return start, None
    stop = check_time(valid_to, "valid_to")
    if stop <= start:
        raise InvalidParty("valid_to must be later than valid_from", valid_from=start,
                           valid_to=stop)
    return start, stop


def point_kind(value: object) -> PointKind:
    try:
        return PointKind(value)
    except ValueError:
        kinds = ", ".join(k.value for k in PointKind)
        raise InvalidParty(f"metering point kind must be one of: {kinds}",
                           value=str(value)[:40]) from None


def key_kind(value: object) -> KeyKind:
    try:
        return KeyKind(value)
    except ValueError:
        kinds = ", ".join(k.value for k in KeyKind)
        raise InvalidParty(f"key kind must be one of: {kinds}", value=str(value)[:40]) from None


def overlaps(a_from: int, a_to: int | None, b_from: int, b_to: int | None) -> bool:
    """Whether two half-open periods [from, to) share an instant (``None`` = open end)."""
    return (b_to is None or a_from < b_to) and (a_to is None or b_from < a_to)


def covers(valid_from: int, valid_to: int | None, instant: int) -> bool:
    return valid_from <= instant and (valid_to is None or instant < valid_to)


# ----------------------------------------------------------------------------- keys


def new_token() -> str:
    """A fresh API token: 256 random bits, base64url, with a prefix secret scanners can spot."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def token_hash(token: str) -> bytes:
    """What is stored and looked up: SHA-256 of the token's UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_key_id() -> str:
    """A key's public id (names it in lists, rotation and revocation; not a secret)."""
    return "k-" + secrets.token_hex(6)
