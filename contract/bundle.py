"""Proof bundles: one file that proves a reading offline, in the C2SP tlog-proof text shape.

```
c2sp.org/tlog-proof@v1
extra <base64 of the bundle extra: CBOR, see below>
index <leaf index of the reading>
<base64 inclusion proof hash>   (one line each, leaf's sibling first)

<signed checkpoint>
```

The tlog-proof ``extra`` data carries what a meterchain verifier needs beyond a plain tlog-proof
(docs/format.md §9): the reading message itself (the entry, which tlog-proof leaves to the
application) and every device leaf of the reading's device, each with its leaf index and its
inclusion proof to the same checkpoint, so the key that signed the reading is proven to be in
the log too, without trusting the operator's registry. Version 2 (issue 17) adds the metering
``point`` the reading counts for and the openings of its meter binding's leaves (§5.1); verified
with the ``assignment-inclusion`` and ``point-assigned`` checks. A bundle without a point stays
version 1, byte for byte.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from meterchain.contract import cbor
from meterchain.contract.assignment import PARTY_ID_RE, AssignmentOpening
from meterchain.contract.checkpoint import DECIMAL_RE, Checkpoint
from meterchain.contract.errors import EncodingError, MeterchainError
from meterchain.contract.leaves import DeviceLeaf, parse_leaf
from meterchain.contract.merkle import HASH_SIZE
from meterchain.contract.message import SignedReading, parse_message
from meterchain.contract.note import NoteVerifier, strict_b64decode
from meterchain.contract.policy import (
    BUNDLE_CHECKS,
    AllOf,
    AssignmentsIncluded,
    Evidence,
    LoggedLeaf,
    LoggedOpening,
    PointAssigned,
    PointClaim,
    Statement,
    VerificationError,
    bundle_policy,
)
from meterchain.contract.tlog_policy import WitnessPolicy

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
BUNDLE_EXTRA_TYPE = "meterchain/bundle/v1"
BUNDLE_EXTRA_TYPE_V2 = "meterchain/bundle/v2"  # with `point` and `assignments` (§9, §5.1)
MAX_BUNDLE_SIZE = 256 * 1024
MAX_PROOF_HASHES = 64
MAX_KEY_ENTRIES = 64

#: The checks ``verify`` runs, in order; the first that fails is named (after the encoding,
#: those of the verification policy, contract/policy.py).
CHECKS = ("encoding", *BUNDLE_CHECKS)


@dataclass(frozen=True, slots=True)
class Bundle:
    reading: LoggedLeaf
    device_leaves: tuple[LoggedLeaf, ...]
    checkpoint: str
    #: version 2: the metering point the reading counts for and its binding leaves' openings
    point: str | None = None
    assignments: tuple[LoggedOpening, ...] = ()

    def to_text(self) -> str:
        fields: dict[str, cbor.CborValue] = {
            "t": BUNDLE_EXTRA_TYPE,
            "entry": self.reading.data,
            "keys": [
                {"leaf": d.data, "index": d.index, "proof": list(d.proof)}
                for d in self.device_leaves
            ],
        }
        if self.point is not None:
            fields |= {"t": BUNDLE_EXTRA_TYPE_V2, "point": self.point, "assignments": [
                {"index": a.index, "salt": a.opening.salt, "fields": a.opening.fields,
                 "proof": list(a.proof)} for a in self.assignments]}
        extra = cbor.encode(fields)
        lines = [
            TLOG_PROOF_HEADER,
            "extra " + base64.b64encode(extra).decode(),
            f"index {self.reading.index}",
            *(base64.b64encode(h).decode() for h in self.reading.proof),
            "",
        ]
        return "\n".join(lines) + "\n" + self.checkpoint

    @classmethod
    def parse(cls, text: str) -> Bundle:
        """Parse the text shape; bounds are checked, nothing cryptographic is verified here."""
        if len(text.encode("utf-8", "replace")) > MAX_BUNDLE_SIZE:
            raise EncodingError(f"bundle is larger than {MAX_BUNDLE_SIZE} bytes", what="bundle")
        head, sep, checkpoint = text.partition("\n\n")
        if not sep:
            raise EncodingError("bundle has no blank line before the checkpoint", what="bundle")
        lines = head.split("\n")
        if lines[0] != TLOG_PROOF_HEADER:
            raise EncodingError(f"bundle must start with {TLOG_PROOF_HEADER!r}", what="bundle")
        if len(lines) < 3 or not lines[1].startswith("extra ") or not lines[2].startswith("index "):
            raise EncodingError("bundle needs an 'extra' line and an 'index' line", what="bundle")
        extra = _b64(lines[1][len("extra ") :], "extra")
        index = _index(lines[2][len("index ") :])
        proof = tuple(_hash(line) for line in lines[3:])
        if len(proof) > MAX_PROOF_HASHES:
            raise EncodingError("bundle inclusion proof is too long", what="bundle")
        obj = cbor.decode(extra, what="bundle extra", max_size=MAX_BUNDLE_SIZE)
        v2 = isinstance(obj, dict) and obj.get("t") == BUNDLE_EXTRA_TYPE_V2
        if not (
            isinstance(obj, dict)
            and set(obj) == ({"t", "entry", "keys", "point", "assignments"} if v2 else {"t", "entry", "keys"})
            and obj["t"] in (BUNDLE_EXTRA_TYPE, BUNDLE_EXTRA_TYPE_V2)
            and isinstance(obj["entry"], bytes)
            and isinstance(obj["keys"], list)
        ):
            raise EncodingError(f"bundle extra must be a {BUNDLE_EXTRA_TYPE} or {BUNDLE_EXTRA_TYPE_V2} "
                                "map", what="bundle")
        if not 1 <= len(obj["keys"]) <= MAX_KEY_ENTRIES:
            raise EncodingError("bundle must carry 1 to 64 device leaves", what="bundle")
        keys = []
        for item in obj["keys"]:
            if not (
                isinstance(item, dict)
                and set(item) == {"leaf", "index", "proof"}
                and isinstance(item["leaf"], bytes)
                and isinstance(item["index"], int)
                and isinstance(item["proof"], list)
                and len(item["proof"]) <= MAX_PROOF_HASHES
                and all(isinstance(h, bytes) for h in item["proof"])
            ):
                raise EncodingError("bundle device leaf entry is malformed", what="bundle")
            keys.append(LoggedLeaf(item["leaf"], item["index"], tuple(item["proof"])))
        if not v2:
            return cls(LoggedLeaf(obj["entry"], index, proof), tuple(keys), checkpoint)
        point, opened = obj["point"], obj["assignments"]
        if not isinstance(point, str) or not PARTY_ID_RE.fullmatch(point) or not isinstance(opened, list) \
                or len(opened) > MAX_KEY_ENTRIES:
            raise EncodingError("bundle point or assignments are malformed", what="bundle")
        assignments = tuple(_opening(item) for item in opened)
        return cls(LoggedLeaf(obj["entry"], index, proof), tuple(keys), checkpoint, point, assignments)


@dataclass
class Verified:
    """What a successful verification established."""

    reading: SignedReading
    leaf_index: int
    checkpoint: Checkpoint
    key: DeviceLeaf
    passed: list[str] = field(default_factory=list)
    #: the witnesses of the policy that cosigned the checkpoint (empty without a policy)
    cosigners: tuple[str, ...] = ()
    #: the metering point the reading counts for, proven (``point-assigned``); None: not claimed
    point: str | None = None


_POINT_CHECKS = AllOf(AssignmentsIncluded(), PointAssigned())


class BundleError(VerificationError):
    """A bundle check failed; ``check`` names it (one of :data:`CHECKS`)."""


def verify_bundle(text: str | bytes, log_key: NoteVerifier, witnesses: WitnessPolicy | None = None) -> Verified:
    """Check a bundle offline against the log's public key (and, given one, a witness policy:
    the ``witnesses`` check after ``checkpoint``); raise :class:`BundleError` naming the first
    check that fails, in the order of :data:`CHECKS`."""
    passed: list[str] = []

    def fail(check: str, exc: Exception | str) -> BundleError:
        return BundleError(str(exc), check=check, passed=list(passed))

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise fail("encoding", "bundle is not UTF-8 text") from None
    try:
        bundle = Bundle.parse(text)
        signed = parse_message(bundle.reading.data)
        device_leaves: list[DeviceLeaf] = []
        for entry in bundle.device_leaves:
            leaf = parse_leaf(entry.data)
            if not isinstance(leaf, DeviceLeaf) or leaf.device != signed.reading.device:
                raise EncodingError("bundle key entries must be device leaves of the reading's device")
            device_leaves.append(leaf)
    except MeterchainError as exc:
        # A high-S or non-DER signature surfaces while parsing the message; name it for what it is.
        check = exc.check if exc.check == "low-s" else "encoding"
        raise fail(check, exc) from None
    passed.append("encoding")

    # Log order decides between leaves with the same valid-from: sort by leaf index first.
    ordered = [leaf for _, leaf in sorted(zip((e.index for e in bundle.device_leaves), device_leaves, strict=True))]
    evidence = Evidence(
        Statement.of_reading(signed),
        device_leaves=ordered,
        leaf=bundle.reading,
        logged_device_leaves=bundle.device_leaves,
        checkpoint_note=bundle.checkpoint,
        passed=passed,
    )
    try:
        bundle_policy(log_key, witnesses).verify(evidence)
        if bundle.point is not None:  # version 2: the point, proven by the logged binding
            evidence.logged_assignments = bundle.assignments
            evidence.claim = PointClaim.of_reading(bundle.point, signed)
            _POINT_CHECKS.verify(evidence)
    except VerificationError as exc:
        raise fail(exc.check, exc) from None
    assert evidence.checkpoint is not None and evidence.key is not None  # the policy set them
    return Verified(signed, bundle.reading.index, evidence.checkpoint, evidence.key, passed,
                    evidence.cosigners, bundle.point)


def _opening(item: object) -> LoggedOpening:
    """One ``assignments`` entry of a version-2 extra (types and bounds only)."""
    types = {"index": int, "salt": bytes, "fields": bytes, "proof": list}
    if not isinstance(item, dict) or set(item) != set(types) \
            or any(not isinstance(item[k], t) for k, t in types.items()) \
            or len(item["proof"]) > MAX_PROOF_HASHES or any(not isinstance(h, bytes) for h in item["proof"]):
        raise EncodingError("bundle assignment entry is malformed", what="bundle")
    return LoggedOpening(AssignmentOpening(item["salt"], item["fields"]), item["index"], tuple(item["proof"]))


def _b64(text: str, what: str) -> bytes:
    try:
        return strict_b64decode(text)
    except ValueError as exc:
        raise EncodingError(f"bundle {what} is {exc}", what="bundle") from None


def _index(text: str) -> int:
    if not DECIMAL_RE.fullmatch(text):
        raise EncodingError("bundle index is not a decimal without leading zeros", what="bundle")
    return int(text)


def _hash(line: str) -> bytes:
    value = _b64(line, "proof hash")
    if len(value) != HASH_SIZE:
        raise EncodingError("bundle proof hash is not 32 bytes", what="bundle")
    return value



