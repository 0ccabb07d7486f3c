"""Log leaves: every entry of the one append-only Merkle tree is a typed CBOR item.

- A **reading leaf** is the message exactly as received (a CBOR array ``[reading, signature]``).
  The leaf covers the signature, which no outsider can predict, so a public leaf hash does not let
  anyone confirm a guessed consumption value.
- A **device leaf** records an enrolment, a key rotation or a revocation: from sequence ``from``
  on, the device's valid key is ``key`` (or, for a revocation, no key is valid any more).
- A **settlement leaf** carries the digest of one settled interval (see docs/netting.md).
- A **control-key leaf** announces the backend's control key, which signs acks
  (contract/control.py); a **gap leaf** is a device's signed gap declaration (contract/gap.py).
- An **assignment leaf** commits, salted, to a meter binding or an occupancy of a metering point
  (contract/assignment.py).

The first byte tells them apart: 0x82 (array of two) is a reading; a map's ``t`` key names the rest.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.assignment import ASSIGNMENT_LEAF_TYPE, AssignmentLeaf
from meterchain.contract.control import CONTROL_KEY_LEAF_TYPE, ControlKeyLeaf
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.gap import GAP_MESSAGE_TYPE, GapMessage
from meterchain.contract.message import MAX_MESSAGE_SIZE, SignedReading, parse_message
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT
from meterchain.contract.signing import KEY_ID_SIZE, key_id, load_public_key

DEVICE_LEAF_TYPE = "meterchain/device/v1"
SETTLEMENT_LEAF_TYPE = "meterchain/settlement/v1"
MAX_LEAF_SIZE = 8192


class DeviceEvent(enum.StrEnum):
    ENROL = "enrol"
    ROTATE = "rotate"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class DeviceLeaf:
    """A change to a device's signing key, valid from sequence number ``valid_from`` on."""

    device: str
    event: DeviceEvent
    public_key_der: bytes
    valid_from: int
    time: int

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not DEVICE_ID_RE.fullmatch(self.device):
            raise FieldError("device leaf: bad device id", field="dev")
        try:
            object.__setattr__(self, "event", DeviceEvent(self.event))
        except ValueError:
            raise FieldError(f"device leaf: unknown event {self.event!r}", field="event") from None
        if not isinstance(self.public_key_der, bytes):
            raise FieldError("device leaf: key must be bytes", field="key")
        load_public_key(self.public_key_der)
        for name, value in (("from", self.valid_from), ("time", self.time)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
                raise FieldError(f"device leaf: {name} must be an integer in [0, 2^53-1]", field=name)
        if self.valid_from < 1:
            raise FieldError("device leaf: sequence numbers start at 1", field="from")

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key_der)

    def to_cbor(self) -> bytes:
        return cbor.encode(
            {
                "t": DEVICE_LEAF_TYPE,
                "dev": self.device,
                "event": self.event.value,
                "key": self.public_key_der,
                "kid": self.key_id,
                "from": self.valid_from,
                "time": self.time,
            }
        )


@dataclass(frozen=True, slots=True)
class SettlementLeaf:
    """The digest of one settled interval; its fields are defined by the netting rules."""

    fields: dict[str, object]


Leaf = SignedReading | DeviceLeaf | SettlementLeaf | ControlKeyLeaf | GapMessage | AssignmentLeaf


def parse_leaf(data: bytes) -> Leaf:
    """Parse any leaf's data into its typed form (the signature is not verified here)."""
    if not data:
        raise EncodingError("leaf: empty", what="leaf")
    if data[0] == 0x82:
        return parse_message(data)
    obj = cbor.decode(data, what="leaf", max_size=MAX_LEAF_SIZE)
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise EncodingError("leaf: neither a reading message nor a typed map", what="leaf")
    if obj["t"] == DEVICE_LEAF_TYPE:
        expected = {"t", "dev", "event", "key", "kid", "from", "time"}
        if set(obj) != expected:
            raise FieldError(f"device leaf: fields must be {sorted(expected)}", field="keys")
        if not isinstance(obj["event"], str):
            raise FieldError("device leaf: event must be text", field="event")
        leaf = DeviceLeaf(
            device=obj["dev"],
            event=obj["event"],  # type: ignore[arg-type]
            public_key_der=obj["key"],
            valid_from=obj["from"],
            time=obj["time"],
        )
        if not isinstance(obj["kid"], bytes) or len(obj["kid"]) != KEY_ID_SIZE or obj["kid"] != leaf.key_id:
            raise FieldError("device leaf: kid is not the SHA-256 of key", field="kid")
        return leaf
    if obj["t"] == SETTLEMENT_LEAF_TYPE:
        return SettlementLeaf(fields=obj)
    if obj["t"] == CONTROL_KEY_LEAF_TYPE:
        return ControlKeyLeaf.from_map(obj)
    if obj["t"] == GAP_MESSAGE_TYPE:
        return GapMessage.from_cbor(data)
    if obj["t"] == ASSIGNMENT_LEAF_TYPE:
        return AssignmentLeaf.from_map(obj)
    raise EncodingError(f"leaf: unknown type {obj['t']!r}", what="leaf")


def valid_key(device_leaves: Sequence[DeviceLeaf], device: str, seq: int) -> DeviceLeaf | None:
    """The device leaf whose key is valid for ``(device, seq)``, or None.

    Leaves are taken in log order. For each sequence number the latest leaf of that device with
    ``valid_from <= seq`` decides: an enrolment or rotation names the valid key, a revocation
    means no key is valid. So a rotated key stays valid below the rotation point.
    """
    best: DeviceLeaf | None = None
    for leaf in device_leaves:
        if leaf.device != device or leaf.valid_from > seq:
            continue
        if best is None or leaf.valid_from >= best.valid_from:
            best = leaf
    if best is None or best.event is DeviceEvent.REVOKE:
        return None
    return best


assert MAX_MESSAGE_SIZE < MAX_LEAF_SIZE
