"""Metering-point assignments in the log (docs/format.md §5.1, issue 17).

Which metering point a reading counts for is decided by a *meter binding* (a meter measures a
point over ``[from, to)``); who lives there by an *occupancy*. The backend logs each binding and
occupancy, and each change of one, as an **assignment leaf**. Such a leaf carries only a salted
commitment::

    commit = SHA-256(salt ‖ fields)

``salt`` is 32 random bytes the backend keeps; ``fields`` is the deterministic CBOR map below.
Without the salt a public leaf hash cannot be tested against guesses: a binding's fields are few
and guessable (a point id, a gateway id, a serial, a day), unlike a reading leaf, whose random
signature protects it (docs/privacy.md). The backend hands out the *opening* (salt and fields)
only to parties entitled to see the point, inside utility batches.

A leaf states a binding's period as known when it was logged. The same binding (kind, point,
meter or household, ``from``) logged again, with its end now set, supersedes the earlier leaf:
the latest in log order decides ``to``.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT, METER_SERIAL_RE

ASSIGNMENT_LEAF_TYPE = "meterchain/assignment/v1"
ASSIGNMENT_FIELDS_TYPE = "meterchain/assignment-fields/v1"
SALT_SIZE = 32
COMMIT_SIZE = 32
#: Metering point and household ids (the backend's party ids, docs/backend.md *Access*).
PARTY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_FIELDS_SIZE = 1024


class AssignmentKind(enum.StrEnum):
    METER = "meter"  # (device, meter) measures the point
    OCCUPANCY = "occupancy"  # a household holds the point


_KEYS = {
    AssignmentKind.METER: {"t", "kind", "point", "dev", "meter", "from", "to", "time"},
    AssignmentKind.OCCUPANCY: {"t", "kind", "point", "household", "from", "to", "time"},
}


def _uint(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
        raise FieldError(f"assignment: {name} must be an integer in [0, 2^53-1]", field=name)
    return value


@dataclass(frozen=True, slots=True)
class Assignment:
    """One binding (``kind`` meter) or occupancy, valid for instants in ``[valid_from, valid_to)``
    (``valid_to`` None: open), as the backend recorded it at ``time``."""

    kind: AssignmentKind
    point: str
    valid_from: int
    valid_to: int | None
    time: int
    device: str | None = None
    meter: str | None = None
    household: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", AssignmentKind(self.kind))
        except ValueError:
            raise FieldError(f"assignment: unknown kind {self.kind!r}", field="kind") from None
        if not isinstance(self.point, str) or not PARTY_ID_RE.fullmatch(self.point):
            raise FieldError("assignment: bad metering point id", field="point")
        _uint(self.valid_from, "from")
        _uint(self.time, "time")
        if self.valid_to is not None and _uint(self.valid_to, "to") <= self.valid_from:
            raise FieldError("assignment: to must be later than from", field="to")
        if self.kind is AssignmentKind.METER:
            if not isinstance(self.device, str) or not DEVICE_ID_RE.fullmatch(self.device):
                raise FieldError("assignment: bad device id", field="dev")
            if not isinstance(self.meter, str) or not METER_SERIAL_RE.fullmatch(self.meter):
                raise FieldError("assignment: bad meter serial", field="meter")
            if self.household is not None:
                raise FieldError("assignment: a meter binding names no household", field="household")
        else:
            if not isinstance(self.household, str) or not PARTY_ID_RE.fullmatch(self.household):
                raise FieldError("assignment: bad household id", field="household")
            if self.device is not None or self.meter is not None:
                raise FieldError("assignment: an occupancy names no meter", field="dev")

    @property
    def binding(self) -> tuple[str, ...]:
        """What identifies the binding across its leaves: kind, point, subject, start."""
        subject = (self.device or "", self.meter or "") if self.kind is AssignmentKind.METER \
            else (self.household or "",)
        return (self.kind.value, self.point, *subject, str(self.valid_from))

    def covers(self, instant: int) -> bool:
        return self.valid_from <= instant and (self.valid_to is None or instant < self.valid_to)

    def to_cbor(self) -> bytes:
        """The fields' one byte form (what the salt is prepended to)."""
        fields: dict[str, cbor.CborValue] = {
            "t": ASSIGNMENT_FIELDS_TYPE, "kind": self.kind.value, "point": self.point,
            "from": self.valid_from, "to": self.valid_to, "time": self.time,
        }
        if self.kind is AssignmentKind.METER:
            fields |= {"dev": self.device, "meter": self.meter}
        else:
            fields["household"] = self.household
        return cbor.encode(fields)

    @classmethod
    def from_cbor(cls, data: bytes) -> Assignment:
        obj = cbor.decode(data, what="assignment fields", max_size=MAX_FIELDS_SIZE)
        if not isinstance(obj, dict) or obj.get("t") != ASSIGNMENT_FIELDS_TYPE:
            raise EncodingError(f"assignment: fields are a map with t = {ASSIGNMENT_FIELDS_TYPE}",
                                what="assignment")
        kind = obj.get("kind")
        if kind not in _KEYS or set(obj) != _KEYS[AssignmentKind(str(kind))]:
            raise FieldError("assignment: fields must be those of a meter binding or an occupancy",
                             field="keys")
        return cls(AssignmentKind(str(kind)), obj["point"], obj["from"], obj["to"],
                   obj["time"], obj.get("dev"), obj.get("meter"), obj.get("household"))


def commitment(salt: bytes, fields: bytes) -> bytes:
    """SHA-256(salt ‖ fields): what an assignment leaf carries."""
    if not isinstance(salt, bytes) or len(salt) != SALT_SIZE:
        raise FieldError(f"assignment: the salt is {SALT_SIZE} bytes", field="salt")
    return hashlib.sha256(salt + fields).digest()


@dataclass(frozen=True, slots=True)
class AssignmentLeaf:
    """The logged form: a commitment only (its contents reveal nothing without the opening)."""

    commit: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.commit, bytes) or len(self.commit) != COMMIT_SIZE:
            raise FieldError(f"assignment leaf: commit is {COMMIT_SIZE} bytes", field="commit")

    def to_cbor(self) -> bytes:
        return cbor.encode({"t": ASSIGNMENT_LEAF_TYPE, "commit": self.commit})

    @classmethod
    def from_map(cls, obj: dict[str, object]) -> AssignmentLeaf:
        if set(obj) != {"t", "commit"} or obj["t"] != ASSIGNMENT_LEAF_TYPE:
            raise FieldError("assignment leaf: fields must be ['commit', 't']", field="keys")
        return cls(obj["commit"])  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AssignmentOpening:
    """A salt and the fields it commits; ``leaf`` is the leaf data they open."""

    salt: bytes
    fields: bytes

    @property
    def assignment(self) -> Assignment:
        return Assignment.from_cbor(self.fields)

    @property
    def leaf(self) -> bytes:
        return AssignmentLeaf(commitment(self.salt, self.fields)).to_cbor()

    @classmethod
    def new(cls, assignment: Assignment) -> AssignmentOpening:
        """A fresh opening of ``assignment`` with 32 random bytes of salt."""
        return cls(secrets.token_bytes(SALT_SIZE), assignment.to_cbor())


def meter_point_at(assignments: Sequence[Assignment], device: str, meter: str,
                   instant: int) -> list[str]:
    """The points the meter bindings (in log order) tie ``(device, meter)`` to at ``instant``.

    Per binding the latest leaf decides its end (format.md §5.1); an honest log gives at most one.
    """
    latest: dict[tuple[str, ...], Assignment] = {}
    for item in assignments:
        if item.kind is AssignmentKind.METER and (item.device, item.meter) == (device, meter):
            latest[item.binding] = item
    return sorted({a.point for a in latest.values() if a.covers(instant)})
