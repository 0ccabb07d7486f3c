"""The one verification policy: small named checks, composed with :class:`AllOf`.

A device signs a *statement* (a reading's bytes, an OCMF payload) that names its device and
sequence number; the log holds the device's key as device leaves (docs/format.md §5). Every
verifier of meterchain (ingest, ``meterchain verify``, the utility batch verifier, audit and
settlement verification) is a composition of the checks below, so each rule is written once:

- ``checkpoint`` (:class:`CheckpointSigned`): the checkpoint note verifies with the log key;
- ``witnesses`` (:class:`WitnessQuorum`): the note's witness cosignatures meet a k-of-n policy;
- ``device-inclusion`` (:class:`DeviceLeavesIncluded`): every device leaf is in its tree;
- ``key-validity`` (:class:`KeyValidForSequence`): a device key is valid for the sequence;
- ``key-id`` (:class:`KeyIdMatches`): the statement names that key's id;
- ``low-s`` (:class:`LowS`): the signature is strict DER with a low S;
- ``signature`` (:class:`SignatureVerifies`): ECDSA P-256/SHA-256 verifies with that key;
- ``inclusion`` (:class:`LeafIncluded`): the statement's leaf is in the checkpoint's tree;
- ``assignment-inclusion`` (:class:`AssignmentsIncluded`): every opened assignment leaf (salt and
  fields, contract/assignment.py) is in the checkpoint's tree;
- ``point-assigned`` (:class:`PointAssigned`): a logged meter binding ties the reading's meter to
  the metering point it is said to count for, at the reading's end.

Checks read an :class:`Evidence` and record what they establish on it (the opened checkpoint,
the valid key), so later checks build on earlier ones; a failure raises
:class:`VerificationError` naming the check and the checks that passed before it. This module is
the only caller of the ECDSA primitive (``signing.ecdsa_verify``) for readings and leaves.

Extending: a new rule is one more class with a ``name`` and a ``verify(evidence)``, composed
where it applies. Witness cosignatures (a quorum over the checkpoint note) compose after
:class:`CheckpointSigned`, or subclass it and extend :meth:`CheckpointSigned.open_note`; a note
signed by another key (a backend control key) is :class:`CheckpointSigned` with that verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from meterchain.contract.assignment import Assignment, AssignmentOpening, meter_point_at
from meterchain.contract.checkpoint import Checkpoint, open_checkpoint
from meterchain.contract.cosignature import verify_cosignatures
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_time
from meterchain.contract.leaves import DeviceLeaf, valid_key
from meterchain.contract.merkle import leaf_hash, verify_inclusion
from meterchain.contract.message import SignedReading
from meterchain.contract.note import NoteVerifier
from meterchain.contract.signing import ecdsa_verify, key_id, parse_signature
from meterchain.contract.tlog_policy import WitnessPolicy

_T = TypeVar("_T")


class VerificationError(MeterchainError):
    """A check of a policy failed: ``check`` is its name, ``passed`` the checks before it."""

    check = "verification"

    def __init__(self, message: str, *, check: str, **context: object) -> None:
        context.setdefault("passed", [])
        super().__init__(message, check=check, **context)

    @property
    def passed(self) -> list[str]:
        passed = self.context.get("passed", [])
        return list(passed) if isinstance(passed, list) else []


@dataclass(frozen=True, slots=True)
class Statement:
    """Bytes a device signed, and who it says signed them.

    ``key_id`` is the key the statement names (a reading's ``kid``); None where the format names
    none (OCMF records: the page number picks the key, docs/format.md §12).
    """

    device: str
    seq: int
    data: bytes
    signature: bytes
    key_id: bytes | None = None

    @classmethod
    def of_reading(cls, signed: SignedReading) -> Statement:
        r = signed.reading
        return cls(r.device, r.seq, signed.reading_bytes, signed.signature, r.key_id)


@dataclass(frozen=True, slots=True)
class LoggedLeaf:
    """Leaf data with its index in the log and its inclusion proof to a checkpoint."""

    data: bytes
    index: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LoggedOpening:
    """An assignment leaf's opening with the leaf's index and inclusion proof."""

    opening: AssignmentOpening
    index: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PointClaim:
    """That the reading of ``(device, meter)`` ending at ``end`` counts for metering ``point``."""

    point: str
    device: str
    meter: str
    end: int

    @classmethod
    def of_reading(cls, point: str, signed: SignedReading) -> PointClaim:
        r = signed.reading
        return cls(point, r.device, r.meter, r.end)


@dataclass(slots=True)
class Evidence:
    """What a policy checks, and what its checks have established so far.

    Inputs: the ``statement``; the device's leaves in log order (``device_leaves``); for offline
    proof, the statement's own ``leaf``, the device leaves as logged (``logged_device_leaves``,
    the same leaves with their indexes and proofs) and the signed ``checkpoint_note``.
    Established: ``checkpoint`` (by :class:`CheckpointSigned`, or given when the caller opened
    it), ``public_key_der`` and ``key`` (by :class:`KeyValidForSequence`, or a given key).
    """

    statement: Statement | None = None
    device_leaves: Sequence[DeviceLeaf] = ()
    leaf: LoggedLeaf | None = None
    logged_device_leaves: Sequence[LoggedLeaf] = ()
    checkpoint_note: str | None = None
    checkpoint: Checkpoint | None = None
    key: DeviceLeaf | None = None
    public_key_der: bytes | None = None
    passed: list[str] = field(default_factory=list)
    #: the policy's witnesses whose cosignatures verified (set by :class:`WitnessQuorum`)
    cosigners: tuple[str, ...] = ()
    #: assignment openings given (input) and the assignments proven, in log order (established
    #: by :class:`AssignmentsIncluded`); the point a reading is said to count for
    logged_assignments: Sequence[LoggedOpening] = ()
    assignments: Sequence[Assignment] | None = None
    claim: PointClaim | None = None


class Check(Protocol):
    """One named rule; ``verify`` raises :class:`VerificationError` (``check`` = ``name``)."""

    @property
    def name(self) -> str: ...

    def verify(self, evidence: Evidence) -> None: ...


def _need(value: _T | None, check: Check, what: str) -> _T:
    # A policy composed without the check that provides ``what`` fails closed, by name.
    if value is None:
        raise VerificationError(f"nothing to check: the evidence has no {what}", check=check.name)
    return value


def _fail(check: Check, message: str | Exception, **context: object) -> VerificationError:
    return VerificationError(str(message), check=check.name, **context)


class CheckpointSigned:
    """The checkpoint note is signed by the log key and its origin is the key's name (§7)."""

    name = "checkpoint"

    def __init__(self, log_key: NoteVerifier) -> None:
        self.log_key = log_key

    def open_note(self, note: str) -> Checkpoint:
        """Verify and parse the note; the seam for stricter checkpoint rules (witnesses)."""
        return open_checkpoint(note, self.log_key)

    def verify(self, evidence: Evidence) -> None:
        note = _need(evidence.checkpoint_note, self, "checkpoint note")
        try:
            evidence.checkpoint = self.open_note(note)
        except MeterchainError as exc:
            raise _fail(self, exc) from exc


class WitnessQuorum:
    """The checkpoint note carries verified cosignatures (C2SP tlog-cosignature) from witnesses
    meeting the policy's quorum; runs after :class:`CheckpointSigned`. A cosignature by a listed
    witness that does not verify fails the check (signed-note: reject the whole note)."""

    name = "witnesses"

    def __init__(self, policy: WitnessPolicy) -> None:
        self.policy = policy

    def verify(self, evidence: Evidence) -> None:
        note = _need(evidence.checkpoint_note, self, "checkpoint note")
        _need(evidence.checkpoint, self, "checkpoint")
        try:
            signed = verify_cosignatures(note, self.policy.keys)
        except MeterchainError as exc:
            raise _fail(self, exc) from exc
        names = tuple(w.name for w in self.policy.witnesses.values() if w.key.name in signed)
        evidence.cosigners = names
        if not self.policy.satisfied(signed):
            missing = [w for w in self.policy.witnesses if w not in names]
            raise _fail(self, f"witness quorum not met: needs {self.policy.describe()}, cosigned by "
                        f"{', '.join(names) or 'none'}", cosigned=list(names), missing=missing)


class DeviceLeavesIncluded:
    """Every logged device leaf is included at its index in the checkpoint's tree."""

    name = "device-inclusion"

    def verify(self, evidence: Evidence) -> None:
        checkpoint = _need(evidence.checkpoint, self, "checkpoint")
        for entry in evidence.logged_device_leaves:
            try:
                verify_inclusion(entry.index, checkpoint.size, leaf_hash(entry.data),
                                 list(entry.proof), checkpoint.root)
            except MeterchainError as exc:
                raise _fail(self, f"device leaf at {entry.index}: {exc}",
                            index=entry.index) from exc


class KeyValidForSequence:
    """A key of the device is valid for the statement's sequence number (§5: the latest device
    leaf at or below it decides, in log order; a revocation means none)."""

    name = "key-validity"

    def verify(self, evidence: Evidence) -> None:
        statement = _need(evidence.statement, self, "statement")
        key = valid_key(evidence.device_leaves, statement.device, statement.seq)
        if key is None:
            raise _fail(
                self,
                f"no key of device {statement.device} is valid for sequence {statement.seq} "
                "(before enrolment or after revocation)",
                device=statement.device, seq=statement.seq,
            )
        evidence.key = key
        evidence.public_key_der = key.public_key_der


class KeyIdMatches:
    """The statement names the id (SHA-256 of the SPKI DER) of the key it is checked with."""

    name = "key-id"

    def verify(self, evidence: Evidence) -> None:
        statement = _need(evidence.statement, self, "statement")
        public_key_der = _need(evidence.public_key_der, self, "key")
        named = _need(statement.key_id, self, "key id in the statement")
        expected = key_id(public_key_der)
        if named != expected:
            raise _fail(
                self,
                f"{statement.device}#{statement.seq} names key {named.hex()[:16]}, but the key "
                f"valid for sequence {statement.seq} is {expected.hex()[:16]}",
                device=statement.device, seq=statement.seq,
            )


class LowS:
    """The signature is strict DER with both scalars in range and s in the lower half (§3)."""

    name = "low-s"

    def verify(self, evidence: Evidence) -> None:
        statement = _need(evidence.statement, self, "statement")
        try:
            parse_signature(statement.signature)
        except MeterchainError as exc:
            raise _fail(self, exc, device=statement.device, seq=statement.seq) from exc


class SignatureVerifies:
    """ECDSA P-256/SHA-256 over the statement's bytes verifies with the key (run after
    :class:`LowS`, which checks the encoding this check relies on)."""

    name = "signature"

    def verify(self, evidence: Evidence) -> None:
        statement = _need(evidence.statement, self, "statement")
        public_key_der = _need(evidence.public_key_der, self, "key")
        try:
            ecdsa_verify(public_key_der, statement.data, statement.signature)
        except (MeterchainError, ValueError) as exc:
            raise _fail(self, exc, device=statement.device, seq=statement.seq) from exc


class LeafIncluded:
    """The statement's leaf is included at its index in the checkpoint's tree."""

    name = "inclusion"

    def verify(self, evidence: Evidence) -> None:
        checkpoint = _need(evidence.checkpoint, self, "checkpoint")
        leaf = _need(evidence.leaf, self, "leaf")
        try:
            verify_inclusion(leaf.index, checkpoint.size, leaf_hash(leaf.data), list(leaf.proof),
                             checkpoint.root)
        except MeterchainError as exc:
            raise _fail(self, exc, index=leaf.index) from exc


class AssignmentsIncluded:
    """Every assignment opening's leaf (SHA-256(salt ‖ fields) in a leaf, format.md §5.1) is
    included at its index in the checkpoint's tree; records the assignments in log order."""

    name = "assignment-inclusion"

    def verify(self, evidence: Evidence) -> None:
        checkpoint = _need(evidence.checkpoint, self, "checkpoint")
        proven: list[tuple[int, Assignment]] = []
        for entry in evidence.logged_assignments:
            try:
                assignment = entry.opening.assignment
                verify_inclusion(entry.index, checkpoint.size, leaf_hash(entry.opening.leaf),
                                 list(entry.proof), checkpoint.root)
            except MeterchainError as exc:
                raise _fail(self, f"assignment leaf at {entry.index}: {exc}",
                            index=entry.index) from exc
            proven.append((entry.index, assignment))
        evidence.assignments = [a for _, a in sorted(proven, key=lambda p: p[0])]


class PointAssigned:
    """The proven meter bindings tie the reading's ``(device, meter)`` to the claimed metering
    point at the reading's end, and to no other (run after :class:`AssignmentsIncluded`)."""

    name = "point-assigned"

    def verify(self, evidence: Evidence) -> None:
        claim = _need(evidence.claim, self, "metering point claim")
        assignments = _need(evidence.assignments, self, "proven assignments")
        points = meter_point_at(assignments, claim.device, claim.meter, claim.end)
        if points == [claim.point]:
            return
        meter = f"{claim.device}/{claim.meter}"
        if not points:
            message = (f"no logged meter binding ties {meter} to {claim.point} at the reading's "
                       f"end, {human_time(claim.end)} (a binding logged after this checkpoint: "
                       "ask for a later `to`)")
        elif claim.point not in points:
            message = f"the logged binding ties {meter} to {', '.join(points)}, not {claim.point}"
        else:
            message = f"logged bindings tie {meter} to several points at once: {', '.join(points)}"
        raise _fail(self, message, point=claim.point, device=claim.device, meter=claim.meter,
                    logged=points)


class AllOf:
    """Every check, in order; the first failure stops it and names its check.

    Nested :class:`AllOf` are flattened, so policies compose from smaller ones.
    """

    def __init__(self, *parts: Check | AllOf) -> None:
        checks: list[Check] = []
        for part in parts:
            checks.extend(part.checks if isinstance(part, AllOf) else (part,))
        self.checks: tuple[Check, ...] = tuple(checks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(check.name for check in self.checks)

    def verify(self, evidence: Evidence) -> None:
        """Run the checks; ``evidence.passed`` lists each that held."""
        for check in self.checks:
            try:
                check.verify(evidence)
            except VerificationError as exc:
                exc.context["passed"] = list(evidence.passed)
                raise
            evidence.passed.append(check.name)


#: A known key signed the statement: key id, encoding and signature.
SIGNED_WITH_KEY = AllOf(KeyIdMatches(), LowS(), SignatureVerifies())
#: The device's key valid for the statement's sequence signed it.
SIGNED_BY_DEVICE = AllOf(KeyValidForSequence(), SIGNED_WITH_KEY)
#: An OCMF record (§12): it names no key id; its page number (the reading's seq) picks the key.
OCMF_RECORD = AllOf(KeyValidForSequence(), LowS(), SignatureVerifies())
#: The checks of a proof bundle after its encoding, in the order ``meterchain verify`` prints.
BUNDLE_CHECKS = (CheckpointSigned.name, DeviceLeavesIncluded.name, *SIGNED_BY_DEVICE.names,
                 LeafIncluded.name)


def checkpoint_policy(log_key: NoteVerifier, witnesses: WitnessPolicy | None = None) -> AllOf:
    """The checkpoint is signed by the log key and, given a witness policy, cosigned by a quorum."""
    return AllOf(CheckpointSigned(log_key), *([WitnessQuorum(witnesses)] if witnesses else []))


def bundle_policy(log_key: NoteVerifier, witnesses: WitnessPolicy | None = None) -> AllOf:
    """A reading proven offline (§10): checkpoint (and its witnesses), device leaves, key,
    signature, inclusion."""
    return AllOf(checkpoint_policy(log_key, witnesses), DeviceLeavesIncluded(), SIGNED_BY_DEVICE,
                 LeafIncluded())


def logged_leaf_policy(log_key: NoteVerifier) -> AllOf:
    """A leaf (any kind) is included under a checkpoint signed by the log key."""
    return AllOf(CheckpointSigned(log_key), LeafIncluded())


def verify_reading(signed: SignedReading, public_key_der: bytes) -> None:
    """Check that ``public_key_der`` signed the reading (key id, low-S, signature)."""
    SIGNED_WITH_KEY.verify(Evidence(Statement.of_reading(signed), public_key_der=public_key_der))
