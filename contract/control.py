"""Backend → gateway control messages, signed by the backend's **control key** (issue 14).

An ack tells a gateway it may delete readings; unsigned, anyone who can publish on its ack topic
could make it forget readings the backend never stored. So every backend → gateway message is a
C2SP signed note (contract/note.py, docs/format.md §11.1) by the control key: an Ed25519 note key
of its own, not the log key (which only the sealer holds). The note text is two lines:

    <context: the message type, e.g. meterchain/ack/v2>
    <base64 of the message body, a deterministic CBOR map whose ``t`` is that same type>

The first line is the context string: a signature over one message type never verifies as
another, and never as a checkpoint (whose first line is the log's origin). The control key is
announced to the log as a control-key leaf, delivered to gateways at provisioning, and rotated
by listing the new key in ``keys`` of acks signed by the old one (a gateway adopts the keys an
ack it verified names).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError, NoteError
from meterchain.contract.note import NoteSigner, NoteVerifier, split_note, strict_b64decode
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT

ACK_V2_TYPE = "meterchain/ack/v2"
CONTROL_KEY_LEAF_TYPE = "meterchain/control-key/v1"
#: The message types the control key signs; each is its own context string.
CONTROL_TYPES = (ACK_V2_TYPE,)
#: A v2 ack lists at most this many rejections for good and declared gaps (a note is ≤ 16 KiB).
MAX_ACK_REJECTED = 32
MAX_ACK_GAPS = 32
MAX_DETAIL = 120
MAX_CONTROL_KEYS = 4


class ControlError(NoteError):
    """A control message is malformed, of another type, or not signed by a trusted key."""

    check = "control"


def control_key_name(origin: str) -> str:
    """The control key's name beside a log origin: ``example.org/log`` → ``example.org/control``."""
    base = origin.rsplit("/", 1)[0] if "/" in origin else origin
    return f"{base}/control"


def sign_control(kind: str, body: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """The signed note of one control message: every signer adds its line (rotation overlap)."""
    if kind not in CONTROL_TYPES:
        raise ControlError(f"unknown control message type {kind!r}")
    if not signers:
        raise ControlError("a control message needs at least one control key")
    text = f"{kind}\n{base64.b64encode(body).decode()}\n"
    note = signers[0].sign_note(text)
    for extra in signers[1:]:  # signed-note allows several signature lines
        note += extra.sign_note(text).split("\n\n", 1)[1]
    return note.encode()


def open_control(payload: bytes, kind: str, trusted: Sequence[NoteVerifier]) -> tuple[bytes, NoteVerifier]:
    """The body of a control message of type ``kind`` and the trusted key that signed it.

    Raises :class:`ControlError` naming what is wrong: not a note, another type, or no signature
    of a trusted key that verifies (a line of an unknown key is ignored, as signed-note says)."""
    text, body = _split(payload, kind)
    signatures = split_note(payload.decode())[1]
    for verifier in trusted:
        for sig in signatures:
            if sig.name == verifier.name and sig.key_hash == verifier.key_hash:
                if verifier.verify(text.encode(), sig.signature):
                    return body, verifier
                raise ControlError(f"the signature of control key {verifier.name} "
                                   f"({verifier.key_hash:08x}) does not verify")
    names = ", ".join(f"{s.name} ({s.key_hash:08x})" for s in signatures)
    raise ControlError(f"signed by no trusted control key (signatures: {names})")


def read_unverified(payload: bytes, kind: str) -> bytes:
    """The body of a control message *without* checking its signature: only for a gateway
    configured without a control key, which raises an alarm for every message it takes."""
    return _split(payload, kind)[1]


def _split(payload: bytes, kind: str) -> tuple[str, bytes]:
    try:
        text, _ = split_note(payload.decode("utf-8"))
    except (UnicodeDecodeError, NoteError) as exc:
        raise ControlError(f"not a signed control message: {exc}") from None
    lines = text.split("\n")
    if len(lines) != 3 or lines[0] != kind:
        raise ControlError(f"not a {kind} message (context line {lines[0][:40]!r})")
    try:
        return text, strict_b64decode(lines[1])
    except ValueError as exc:
        raise ControlError(f"{kind}: body is {exc}") from None


@dataclass(frozen=True, slots=True)
class SignedAck:
    """Ack v2: ``upto`` (every seq ≤ it is committed, rejected for good or a declared gap),
    recent rejections for good, recent declared gaps, and the control keys in use."""

    device: str
    upto: int
    rejected: tuple[tuple[int, str, str], ...] = ()
    gaps: tuple[tuple[int, int], ...] = ()
    time: int = 0
    keys: tuple[str, ...] = ()

    def body(self) -> bytes:
        return cbor.encode({
            "t": ACK_V2_TYPE,
            "dev": self.device,
            "upto": self.upto,
            "time": self.time,
            "rejected": [[s, r, d[:MAX_DETAIL]] for s, r, d in self.rejected[-MAX_ACK_REJECTED:]],
            "gaps": [[a, b] for a, b in self.gaps[-MAX_ACK_GAPS:]],
            "keys": list(self.keys[:MAX_CONTROL_KEYS]),
        })

    def sign(self, signers: Sequence[NoteSigner]) -> bytes:
        return sign_control(ACK_V2_TYPE, self.body(), signers)

    @classmethod
    def from_body(cls, body: bytes) -> SignedAck:
        obj = cbor.decode(body, what="ack", max_size=16 * 1024)
        expected = {"t", "dev", "upto", "time", "rejected", "gaps", "keys"}
        if not isinstance(obj, dict) or set(obj) != expected:
            raise EncodingError(f"ack: must be a map of {sorted(expected)}", what="ack")
        if obj["t"] != ACK_V2_TYPE:
            raise FieldError(f"ack: type must be {ACK_V2_TYPE}", field="t")
        if not isinstance(obj["dev"], str) or not DEVICE_ID_RE.fullmatch(obj["dev"]):
            raise FieldError("ack: bad device id", field="dev")
        for name in ("upto", "time"):
            _uint(obj[name], name)
        rejected, gaps, keys = obj["rejected"], obj["gaps"], obj["keys"]
        if not isinstance(rejected, list) or len(rejected) > MAX_ACK_REJECTED or not all(
            isinstance(i, list) and len(i) == 3 and _is_seq(i[0]) and isinstance(i[1], str)
            and isinstance(i[2], str) and len(i[2]) <= MAX_DETAIL for i in rejected
        ):
            raise FieldError("ack: rejected is a list of [seq, reason, detail]", field="rejected")
        if not isinstance(gaps, list) or len(gaps) > MAX_ACK_GAPS or not all(
            isinstance(g, list) and len(g) == 2 and _is_seq(g[0]) and _is_seq(g[1])
            and g[0] <= g[1] for g in gaps
        ):
            raise FieldError("ack: gaps is a list of [first, last]", field="gaps")
        if not isinstance(keys, list) or len(keys) > MAX_CONTROL_KEYS or not all(
            isinstance(k, str) for k in keys
        ):
            raise FieldError("ack: keys is a list of control verifier keys", field="keys")
        for k in keys:
            NoteVerifier.parse(k)  # each must be a well-formed key
        return cls(obj["dev"], obj["upto"], tuple((i[0], i[1], i[2]) for i in rejected),
                   tuple((g[0], g[1]) for g in gaps), obj["time"], tuple(keys))


@dataclass(frozen=True, slots=True)
class ControlKeyLeaf:
    """A log leaf announcing a control key (docs/format.md §5): ``enrol`` for the first,
    ``rotate`` for each next one. ``key`` is the verifier text ``name+hash+base64``."""

    key: str
    event: str
    time: int

    def __post_init__(self) -> None:
        NoteVerifier.parse(self.key)
        if self.event not in ("enrol", "rotate"):
            raise FieldError(f"control-key leaf: unknown event {self.event!r}", field="event")
        _uint(self.time, "time")

    def to_cbor(self) -> bytes:
        return cbor.encode({"t": CONTROL_KEY_LEAF_TYPE, "key": self.key, "event": self.event,
                            "time": self.time})

    @classmethod
    def from_map(cls, obj: dict[str, object]) -> ControlKeyLeaf:
        if set(obj) != {"t", "key", "event", "time"}:
            raise FieldError("control-key leaf: fields must be t, key, event, time", field="keys")
        if not isinstance(obj["key"], str) or not isinstance(obj["event"], str):
            raise FieldError("control-key leaf: key and event are text", field="key")
        return cls(obj["key"], obj["event"], obj["time"])  # type: ignore[arg-type]


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SAFE_INT


def _uint(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
        raise FieldError(f"{name} must be an integer in [0, 2^53-1]", field=name)
