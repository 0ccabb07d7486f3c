"""A gap declaration: a device says which of its sequence numbers it can no longer account for.

A gateway that lost its outbox cannot tell which of the sequence numbers it had reserved
(docs/agent.md, "Sequence reservation") were signed, published or stored. It resumes above the
reservation and declares the range it cannot vouch for, signed by its device key, so every
sequence of every device is accounted for: stored, rejected for good, or declared (docs/format.md
§4.1). A declaration does not delete anything: a reading of a declared sequence that arrives
later is still stored. The backend logs the message as a gap leaf and acks the range.

Declaration (the signed bytes), a CBOR map: ``t`` ``"meterchain/gap/v1"``, ``dev``, ``kid`` (key id
of the signing key), ``first``, ``last`` (1 ≤ first ≤ last, last − first < 2^16), ``time`` (UTC
s), ``why`` (``outbox-lost`` or ``outbox-corrupt``). Its bytes begin with the map head and the
type string, so they are never a reading (§2) nor an OCMF payload (§12): the device key's
signatures over one kind never verify as another.

Message (published on the readings topic, and the leaf data), a CBOR map: ``t``
``"meterchain/gap-message/v1"``, ``decl`` (the declaration's bytes), ``sig`` (DER ECDSA P-256,
low-S, by the device key valid for every declared sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT
from meterchain.contract.signing import KEY_ID_SIZE, MAX_SIGNATURE_SIZE, Signer, key_id

GAP_TYPE = "meterchain/gap/v1"
GAP_MESSAGE_TYPE = "meterchain/gap-message/v1"
GAP_REASONS = ("outbox-lost", "outbox-corrupt")
#: One declaration covers at most this many sequence numbers (a longer range is split).
MAX_GAP_SPAN = 1 << 16
MAX_GAP_MESSAGE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class GapDeclaration:
    device: str
    key_id: bytes
    first: int
    last: int
    time: int
    why: str

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not DEVICE_ID_RE.fullmatch(self.device):
            raise FieldError("gap: bad device id", field="dev")
        if not isinstance(self.key_id, bytes) or len(self.key_id) != KEY_ID_SIZE:
            raise FieldError("gap: kid must be 32 bytes", field="kid")
        for name, value in (("first", self.first), ("last", self.last), ("time", self.time)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
                raise FieldError(f"gap: {name} must be an integer in [0, 2^53-1]", field=name)
        if not 1 <= self.first <= self.last or self.last - self.first >= MAX_GAP_SPAN:
            raise FieldError(f"gap: need 1 <= first <= last < first + {MAX_GAP_SPAN}",
                             field="first")
        if self.why not in GAP_REASONS:
            raise FieldError(f"gap: why must be one of {GAP_REASONS}", field="why")

    def to_cbor(self) -> bytes:
        return cbor.encode({"t": GAP_TYPE, "dev": self.device, "kid": self.key_id,
                            "first": self.first, "last": self.last, "time": self.time,
                            "why": self.why})

    @classmethod
    def from_cbor(cls, data: bytes) -> GapDeclaration:
        obj = cbor.decode(data, what="gap", max_size=MAX_GAP_MESSAGE_SIZE)
        keys = {"t", "dev", "kid", "first", "last", "time", "why"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise EncodingError(f"gap: must be a map of {sorted(keys)}", what="gap")
        if obj["t"] != GAP_TYPE:
            raise FieldError(f"gap: type must be {GAP_TYPE}", field="t")
        return cls(obj["dev"], obj["kid"], obj["first"], obj["last"], obj["time"], obj["why"])

    def sign(self, signer: Signer) -> GapMessage:
        if key_id(signer.public_key_der) != self.key_id:
            raise FieldError("gap: kid is not the signer's key id", field="kid")
        data = self.to_cbor()
        return GapMessage(self, data, signer.sign(data))


@dataclass(frozen=True, slots=True)
class GapMessage:
    declaration: GapDeclaration
    declaration_bytes: bytes
    signature: bytes

    def to_cbor(self) -> bytes:
        return cbor.encode({"t": GAP_MESSAGE_TYPE, "decl": self.declaration_bytes,
                            "sig": self.signature})

    @classmethod
    def from_cbor(cls, data: bytes) -> GapMessage:
        obj = cbor.decode(data, what="gap message", max_size=MAX_GAP_MESSAGE_SIZE)
        if not isinstance(obj, dict) or set(obj) != {"t", "decl", "sig"}:
            raise EncodingError("gap message: must be a map of t, decl, sig", what="gap")
        if obj["t"] != GAP_MESSAGE_TYPE:
            raise FieldError(f"gap message: type must be {GAP_MESSAGE_TYPE}", field="t")
        if not isinstance(obj["decl"], bytes) or not isinstance(obj["sig"], bytes) or not (
            8 <= len(obj["sig"]) <= MAX_SIGNATURE_SIZE
        ):
            raise FieldError("gap message: decl and sig are bytes", field="decl")
        return cls(GapDeclaration.from_cbor(obj["decl"]), obj["decl"], obj["sig"])


def is_gap_message(payload: bytes) -> bool:
    """Whether a readings-topic payload is meant as a gap message (a map, not an array)."""
    return bool(payload) and 0xA0 <= payload[0] <= 0xB7
