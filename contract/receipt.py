"""Receipts and a gateway's view of the log (issue 17), pure: what a gateway needs to hold
evidence that its reading was logged and to catch a log that rolls back or forks.

A **receipt** (``meterchain/receipt/v1``, deterministic CBOR) is the backend's answer once a
reading is under a cosigned checkpoint: ``{t, dev, seq, entry, index, proof, checkpoint}``, the
message exactly as the gateway signed it, its leaf index, the inclusion proof and the signed
checkpoint note (log signature and witness cosignatures). :func:`verify_receipt` checks it with
the log key and the witness policy from provisioning: the checkpoint policy (``checkpoint``,
``witnesses``), that the entry is the device's reading ``seq`` and ``inclusion``.

A :class:`LogView` is the newest checkpoint a gateway has verified. For each newer one it names
the consistency proof it needs (:meth:`LogView.needs`); :meth:`LogView.advance` checks it. A
smaller size, or the same size with another root, or a proof that does not verify, raises
:class:`LogInconsistent`: the log showed this gateway a history that is not the one it showed
before. The backend sends receipts on :func:`receipt_topic` (backend/log/receipts.py); the agent
keeps its view and raises the alarm (agent/receipts.py); docs/mqtt.md, "Receipts".
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.ack import TOPIC_PREFIX
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.errors import EncodingError, FieldError, MeterchainError
from meterchain.contract.merkle import HASH_SIZE, verify_consistency
from meterchain.contract.message import parse_message
from meterchain.contract.note import NoteVerifier
from meterchain.contract.policy import Evidence, LeafIncluded, LoggedLeaf, checkpoint_policy
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT
from meterchain.contract.tlog_policy import WitnessPolicy

RECEIPT_TYPE = "meterchain/receipt/v1"
MAX_RECEIPT_SIZE = 32 * 1024
MAX_PROOF = 64
_KEYS = {"t", "dev", "seq", "entry", "index", "proof", "checkpoint"}


def receipt_topic(device: str) -> str:
    """Where the backend publishes a device's receipts (QoS 1, not retained); only it may read them."""
    return f"{TOPIC_PREFIX}/{device}/receipts"


class LogInconsistent(MeterchainError):
    """The log contradicted a checkpoint this gateway verified before: an alarm, never retried."""

    check = "log-consistency"


@dataclass(frozen=True, slots=True)
class Receipt:
    device: str
    seq: int
    entry: bytes
    index: int
    proof: tuple[bytes, ...]
    checkpoint: str

    def to_cbor(self) -> bytes:
        return cbor.encode({"t": RECEIPT_TYPE, "dev": self.device, "seq": self.seq, "entry": self.entry,
                            "index": self.index, "proof": list(self.proof), "checkpoint": self.checkpoint})

    @classmethod
    def from_cbor(cls, data: bytes) -> Receipt:
        obj = cbor.decode(data, what="receipt", max_size=MAX_RECEIPT_SIZE)
        if not isinstance(obj, dict) or set(obj) != _KEYS:
            raise EncodingError(f"receipt: must be a map of {sorted(_KEYS)}", what="receipt")
        if obj["t"] != RECEIPT_TYPE:
            raise FieldError(f"receipt: type must be {RECEIPT_TYPE}", field="t")
        if not isinstance(obj["dev"], str) or not DEVICE_ID_RE.fullmatch(obj["dev"]):
            raise FieldError("receipt: bad device id", field="dev")
        for name in ("seq", "index"):
            value = obj[name]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
                raise FieldError(f"receipt: {name} must be an integer in [0, 2^53-1]", field=name)
        proof = obj["proof"]
        if (not isinstance(proof, list) or len(proof) > MAX_PROOF
                or not all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in proof)):
            raise FieldError("receipt: proof must be at most 64 hashes of 32 bytes", field="proof")
        if not isinstance(obj["entry"], bytes) or not isinstance(obj["checkpoint"], str):
            raise FieldError("receipt: entry is bytes, checkpoint text", field="entry")
        return cls(obj["dev"], obj["seq"], obj["entry"], obj["index"], tuple(proof), obj["checkpoint"])


def verify_receipt(receipt: Receipt, log_key: NoteVerifier, witnesses: WitnessPolicy | None = None) -> Checkpoint:
    """Check a receipt; return its checkpoint or raise (``check`` names the failed check)."""
    evidence = Evidence(checkpoint_note=receipt.checkpoint,
                        leaf=LoggedLeaf(receipt.entry, receipt.index, receipt.proof))
    checkpoint_policy(log_key, witnesses).verify(evidence)
    reading = parse_message(receipt.entry).reading
    if (reading.device, reading.seq) != (receipt.device, receipt.seq):
        raise FieldError(f"receipt names {receipt.device}#{receipt.seq} but holds {reading.device}#{reading.seq}",
                         field="entry")
    LeafIncluded().verify(evidence)
    assert evidence.checkpoint is not None  # the checkpoint policy set it
    return evidence.checkpoint


@dataclass
class LogView:
    """The newest checkpoint verified so far (None before the first)."""

    newest: Checkpoint | None = None

    def needs(self, checkpoint: Checkpoint) -> tuple[int, int] | None:
        """The (old, new) sizes of the consistency proof ``checkpoint`` needs, None if none does;
        raises :class:`LogInconsistent` if it cannot be consistent with the newest."""
        old = self.newest
        if old is None or old.size == 0 or checkpoint.size == old.size and checkpoint.root == old.root:
            return None
        if checkpoint.origin != old.origin:
            raise LogInconsistent(f"checkpoint of log {checkpoint.origin!r}, not {old.origin!r}")
        if checkpoint.size < old.size:
            return (checkpoint.size, old.size)  # an older checkpoint: proven against the newest
        if checkpoint.size == old.size:
            raise LogInconsistent(f"two checkpoints of size {old.size} with different roots (a fork)",
                                  size=old.size)
        return (old.size, checkpoint.size)

    def advance(self, checkpoint: Checkpoint, proof: list[bytes] | None = None) -> None:
        """Take ``checkpoint`` (already verified with the log key and policy) with the proof
        :meth:`needs` asked for; the newest moves forward only."""
        sizes = self.needs(checkpoint)
        newest = self.newest
        if sizes is not None and newest is not None:
            old, new = (newest, checkpoint) if sizes[0] == newest.size else (checkpoint, newest)
            try:
                verify_consistency(old.size, new.size, old.root, new.root, proof or [])
            except MeterchainError as exc:
                raise LogInconsistent(f"checkpoint {checkpoint.size} is not consistent with checkpoint "
                                      f"{newest.size} seen before: {exc}", size=checkpoint.size) from None
        if newest is None or checkpoint.size > newest.size:
            self.newest = checkpoint

    def to_json(self) -> str:
        cp = self.newest
        return json.dumps(None if cp is None else
                          {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode()})

    @classmethod
    def from_json(cls, text: str) -> LogView:
        doc = json.loads(text)
        return cls(None if doc is None else Checkpoint(doc["origin"], doc["size"], base64.b64decode(doc["root"])))
