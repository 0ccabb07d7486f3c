"""Verify a utility batch page (docs/utility-guide.md §2–3) offline: pure code over the page's
bytes (JSON with base64, or deterministic CBOR) and the log key.

The checks, in order: both signed checkpoints and their sizes; the consistency proof between
them; every device leaf's inclusion; every assignment opening's inclusion (format.md §5.1); then
per entry its range and order, its inclusion, the reading it names, a logged key valid for its
seq (format.md §5), the key id, low-S and the signature, and (``point-assigned``) that a logged
meter binding ties the reading's meter to the entry's ``point`` at the reading's end. The
checkpoint, inclusion, key, signature and assignment checks are those of the verification policy
(contract/policy.py). Every failure is a :class:`BatchError` naming the check (and the entry's
index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meterchain.contract import cbor
from meterchain.contract.assignment import AssignmentOpening
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf, parse_leaf
from meterchain.contract.merkle import verify_consistency
from meterchain.contract.message import SignedReading, parse_message
from meterchain.contract.note import NoteVerifier, strict_b64decode
from meterchain.contract.policy import (
    SIGNED_BY_DEVICE,
    AllOf,
    AssignmentsIncluded,
    CheckpointSigned,
    DeviceLeavesIncluded,
    Evidence,
    LeafIncluded,
    LoggedLeaf,
    LoggedOpening,
    PointAssigned,
    PointClaim,
    Statement,
    VerificationError,
    checkpoint_policy,
)
from meterchain.contract.reading import MAX_SAFE_INT
from meterchain.contract.tlog_policy import WitnessPolicy

#: Version 2 adds ``assignments`` (the openings that prove each entry's ``point``); a version-1
#: page proves no point and is refused, so nobody can strip the proofs and call it version 1.
BATCH_TYPE = "meterchain/utility-batch/v2"
BATCH_TYPE_V1 = "meterchain/utility-batch/v1"
#: A page of 1000 readings is ≈ 0.8 MB of CBOR (≈ 1.1 MB as JSON); refuse far larger input.
MAX_PAGE_SIZE = 16 * 1024 * 1024
_KEYS = {"t", "from", "to", "old", "new", "consistency", "entries", "keys", "assignments", "cursor",
         "next"}


class BatchError(MeterchainError):
    """A batch page is malformed or one of its checks failed (``check`` names which)."""

    check = "batch"


@dataclass(frozen=True, slots=True)
class VerifiedEntry:
    index: int
    point: str | None
    signed: SignedReading


@dataclass(frozen=True, slots=True)
class VerifiedPage:
    size_from: int
    size_to: int
    root: bytes  # the root of checkpoint `new`
    entries: tuple[VerifiedEntry, ...]
    next: int | None
    #: the witnesses of the policy that cosigned checkpoint `new` (empty without a policy)
    cosigners: tuple[str, ...] = ()


def verify_page(data: bytes, verifier: NoteVerifier, witnesses: WitnessPolicy | None = None) -> VerifiedPage:
    """Parse and check one page; raises :class:`BatchError` (``check`` = the failed check). With a
    witness policy, checkpoint `new` must carry a quorum of cosignatures (check ``witnesses``)."""
    doc, raw = _load(data)
    try:
        return _verify(doc, raw, checkpoint_policy(verifier, witnesses))
    except BatchError:
        raise
    except MeterchainError as exc:
        # A page-level policy check (checkpoint, device-inclusion) keeps its context; which
        # policy checks passed before it says nothing about the page's own order of checks.
        context = {k: v for k, v in exc.context.items() if k != "passed"}
        raise BatchError(str(exc), check=exc.check, **context) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BatchError(f"batch: malformed page ({type(exc).__name__}: {exc})",
                         check="encoding") from None


def _load(data: bytes) -> tuple[dict[str, Any], Any]:
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_PAGE_SIZE:
        raise BatchError(f"batch: expected at most {MAX_PAGE_SIZE} bytes", check="encoding")
    if data[:1] == b"{":
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise BatchError(f"batch: not JSON ({exc})", check="encoding") from None
        raw = _from_base64
    else:
        try:
            doc = cbor.decode(bytes(data), what="batch", max_size=MAX_PAGE_SIZE)
        except MeterchainError as exc:
            raise BatchError(str(exc), check="encoding") from None
        raw = _bytes
    if isinstance(doc, dict) and doc.get("t") == BATCH_TYPE_V1:
        raise BatchError(f"batch: a {BATCH_TYPE_V1} page proves no metering point; fetch the page "
                         f"again ({BATCH_TYPE})", check="encoding")
    if not isinstance(doc, dict) or set(doc) != _KEYS or doc.get("t") != BATCH_TYPE:
        raise BatchError(f"batch: a page is a map of {sorted(_KEYS)} with t = {BATCH_TYPE}",
                         check="encoding")
    return doc, raw


def _from_base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise BatchError("batch: expected base64 text", check="encoding")
    return strict_b64decode(value)


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise BatchError("batch: expected a byte string", check="encoding")
    return value


def _uint(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
        raise BatchError(f"batch: {name} must be an integer in [0, 2^53-1]", check="encoding")
    return value


def _hashes(values: object, raw: Any) -> list[bytes]:
    if not isinstance(values, list) or len(values) > 64:
        raise BatchError("batch: a proof is a list of at most 64 hashes", check="encoding")
    return [raw(v) for v in values]


_DEVICE_LEAVES_INCLUDED = DeviceLeavesIncluded()
_LEAF_INCLUDED = LeafIncluded()
_ASSIGNMENTS_INCLUDED = AssignmentsIncluded()
_POINT_ASSIGNED = PointAssigned()


def _opened(checkpoint_signed: CheckpointSigned | AllOf, evidence: Evidence) -> Checkpoint:
    checkpoint_signed.verify(evidence)
    if evidence.checkpoint is None:  # pragma: no cover - CheckpointSigned sets it or raises
        raise BatchError("checkpoint was not opened", check="checkpoint")
    return evidence.checkpoint


def _verify(doc: dict[str, Any], raw: Any, checkpoint_checks: AllOf) -> VerifiedPage:
    size_from, size_to = _uint(doc["from"], "from"), _uint(doc["to"], "to")
    cursor = _uint(doc["cursor"], "cursor")
    # `new` is checked against the whole checkpoint policy; `old`, proven consistent with it
    # below, needs only the log's signature (it may predate the witnesses).
    checkpoint_signed = checkpoint_checks.checks[0]
    assert isinstance(checkpoint_signed, CheckpointSigned)
    page = Evidence(checkpoint_note=doc["new"])
    new = _opened(checkpoint_checks, page)
    if new.size != size_to:
        raise BatchError(f"checkpoint `new` has size {new.size}, not {size_to}", check="checkpoint")
    if size_from:
        old = _opened(checkpoint_signed, Evidence(checkpoint_note=doc["old"]))
        if old.size != size_from:
            raise BatchError(f"checkpoint `old` has size {old.size}, not {size_from}",
                             check="checkpoint")
        consistency = _hashes(doc["consistency"], raw)
        if size_from != size_to or consistency:
            verify_consistency(size_from, size_to, old.root, new.root, consistency)
        elif old.root != new.root:
            raise BatchError("equal sizes with different roots", check="consistency")
    page.logged_device_leaves = [
        LoggedLeaf(raw(item["leaf"]), _uint(item["index"], "index"),
                   tuple(_hashes(item["proof"], raw)))
        for item in sorted(doc["keys"], key=lambda k: _uint(k["index"], "index"))
    ]
    _DEVICE_LEAVES_INCLUDED.verify(page)
    leaves: list[DeviceLeaf] = []
    for logged in page.logged_device_leaves:
        leaf = parse_leaf(logged.data)
        if not isinstance(leaf, DeviceLeaf):
            raise BatchError(f"leaf {logged.index} in `keys` is not a device leaf",
                             check="encoding")
        leaves.append(leaf)
    if not isinstance(doc["assignments"], list):
        raise BatchError("batch: assignments is a list", check="encoding")
    page.logged_assignments = [
        LoggedOpening(AssignmentOpening(raw(item["salt"]), raw(item["fields"])),
                      _uint(item["index"], "index"), tuple(_hashes(item["proof"], raw)))
        for item in doc["assignments"]
    ]
    _ASSIGNMENTS_INCLUDED.verify(page)
    entries = []
    last = cursor - 1
    for item in doc["entries"]:
        index = _uint(item["index"], "index")
        if not (size_from <= index < size_to and index > last):
            raise BatchError(f"entry {index} is outside [{max(size_from, cursor)}, {size_to}) or "
                             "out of order", check="range", index=index)
        last = index
        message = raw(item["message"])
        point = item["point"]
        if point is not None and not isinstance(point, str):
            raise BatchError("batch: point must be text or null", check="encoding")
        entry = Evidence(device_leaves=leaves, checkpoint=new, assignments=page.assignments,
                         leaf=LoggedLeaf(message, index, tuple(_hashes(item["proof"], raw))))
        try:
            _LEAF_INCLUDED.verify(entry)
            signed = parse_message(message)
            reading = signed.reading
            if (reading.device, reading.seq) != (item["device"], item["seq"]):
                raise BatchError(f"entry {index} names {item['device']}#{item['seq']} but holds "
                                 f"{reading.device}#{reading.seq}", check="entry", index=index)
            entry.statement = Statement.of_reading(signed)
            SIGNED_BY_DEVICE.verify(entry)
            if point is not None:
                entry.claim = PointClaim.of_reading(point, signed)
                _POINT_ASSIGNED.verify(entry)
        except VerificationError as exc:
            raise BatchError(str(exc), check=exc.check, index=index) from None
        entries.append(VerifiedEntry(index, point, signed))
    following = doc["next"]
    return VerifiedPage(size_from, size_to, new.root, tuple(entries),
                        None if following is None else _uint(following, "next"), page.cosigners)
