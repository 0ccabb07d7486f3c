"""The verification policy: each check fails by its own name, in order; compositions hold."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.contract import signing
from meterchain.contract.bundle import CHECKS
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf, parse_leaf
from meterchain.contract.message import parse_message, sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.policy import (
    BUNDLE_CHECKS,
    OCMF_RECORD,
    SIGNED_BY_DEVICE,
    AllOf,
    CheckpointSigned,
    DeviceLeavesIncluded,
    Evidence,
    KeyValidForSequence,
    LeafIncluded,
    LoggedLeaf,
    Statement,
    VerificationError,
    bundle_policy,
    logged_leaf_policy,
    verify_reading,
)

from tests.support.contract import SmallLog, make_reading

SIGNER = signing.CryptographySigner(signing.generate_private_key_pem())
OTHER = signing.CryptographySigner(signing.generate_private_key_pem())
#: What ``meterchain verify`` prints, in its order: unchanged by the policy.
VERIFY_NAMES = ("encoding", "checkpoint", "device-inclusion", "key-validity", "key-id", "low-s",
                "signature", "inclusion")


def _evidence(small_log: SmallLog, index: int = 2) -> Evidence:
    """Everything a bundle carries for the reading at ``index``, unverified."""
    bundle = small_log.bundle(index)
    leaves = [parse_leaf(entry.data) for entry in bundle.device_leaves]
    assert all(isinstance(leaf, DeviceLeaf) for leaf in leaves)
    return Evidence(
        Statement.of_reading(parse_message(bundle.reading.data)),
        device_leaves=leaves,  # type: ignore[arg-type]
        leaf=bundle.reading,
        logged_device_leaves=bundle.device_leaves,
        checkpoint_note=bundle.checkpoint,
    )


def _high_s(signature: bytes) -> bytes:
    r, s = decode_dss_signature(signature)
    return encode_dss_signature(r, signing.P256_ORDER - s)


def test_the_names_verify_prints_are_the_policys_in_order(small_log: SmallLog) -> None:
    assert CHECKS == VERIFY_NAMES
    assert bundle_policy(small_log.log_key.verifier).names == BUNDLE_CHECKS == VERIFY_NAMES[1:]


def test_a_valid_reading_passes_every_check_and_establishes_checkpoint_and_key(
    small_log: SmallLog,
) -> None:
    evidence = _evidence(small_log)
    bundle_policy(small_log.log_key.verifier).verify(evidence)
    assert evidence.passed == list(BUNDLE_CHECKS)
    assert evidence.checkpoint is not None and evidence.checkpoint.size == len(small_log.leaves)
    assert evidence.key is not None and evidence.key.public_key_der == small_log.device_signer.public_key_der
    assert evidence.public_key_der == small_log.device_signer.public_key_der


def _break(check: str, small_log: SmallLog, evidence: Evidence) -> NoteSigner:
    """Break exactly ``check`` in ``evidence``; return the log key to verify with."""
    statement = evidence.statement
    assert statement is not None and evidence.leaf is not None
    log_key = small_log.log_key
    if check == "checkpoint":
        log_key = NoteSigner.generate(small_log.log_key.name)  # same name, another key
    elif check == "device-inclusion":
        entry = evidence.logged_device_leaves[0]
        evidence.logged_device_leaves = [LoggedLeaf(entry.data, entry.index + 1, entry.proof)]
    elif check == "key-validity":
        revoked = DeviceLeaf("gw-1", DeviceEvent.REVOKE, small_log.device_signer.public_key_der, 1, 0)
        evidence.device_leaves = [*evidence.device_leaves, revoked]
    elif check == "key-id":
        other = signing.key_id(small_log.other_signer.public_key_der)
        evidence.statement = dataclasses.replace(statement, key_id=other)
    elif check == "low-s":
        evidence.statement = dataclasses.replace(statement, signature=_high_s(statement.signature))
    elif check == "signature":
        forged = small_log.other_signer.sign(statement.data)
        evidence.statement = dataclasses.replace(statement, signature=forged)
    elif check == "inclusion":
        evidence.leaf = LoggedLeaf(evidence.leaf.data, evidence.leaf.index + 1, evidence.leaf.proof)
    return log_key


@pytest.mark.parametrize("check", BUNDLE_CHECKS)
def test_each_check_fails_by_its_own_name_after_the_ones_before_it(
    small_log: SmallLog, check: str
) -> None:
    evidence = _evidence(small_log)
    log_key = _break(check, small_log, evidence)
    with pytest.raises(VerificationError) as failed:
        bundle_policy(log_key.verifier).verify(evidence)
    before = list(BUNDLE_CHECKS[: BUNDLE_CHECKS.index(check)])
    assert failed.value.check == check
    assert failed.value.passed == before == evidence.passed
    assert failed.value.diagnostics().startswith(f"[{check}] ")


def test_the_first_failure_in_order_is_named_and_later_checks_do_not_run(
    small_log: SmallLog,
) -> None:
    evidence = _evidence(small_log)
    _break("inclusion", small_log, evidence)
    _break("key-validity", small_log, evidence)
    ran: list[str] = []

    class Recorder:
        name = "recorder"

        def verify(self, evidence: Evidence) -> None:
            ran.append(self.name)

    policy = AllOf(bundle_policy(small_log.log_key.verifier), Recorder())
    with pytest.raises(VerificationError) as failed:
        policy.verify(evidence)
    assert failed.value.check == "key-validity" and ran == []
    assert policy.names == (*BUNDLE_CHECKS, "recorder")  # nested AllOf are flattened


def test_a_check_without_its_evidence_fails_closed_by_name() -> None:
    for check, evidence in [
        (LeafIncluded(), Evidence(leaf=LoggedLeaf(b"x", 0, ()))),  # no checkpoint opened
        (DeviceLeavesIncluded(), Evidence()),
        (KeyValidForSequence(), Evidence()),  # no statement
    ]:
        with pytest.raises(VerificationError) as failed:
            check.verify(evidence)
        assert failed.value.check == check.name and "nothing to check" in str(failed.value)
    signed = sign_reading(make_reading(SIGNER, 1), SIGNER)
    with pytest.raises(VerificationError) as failed:  # the key is never established
        AllOf(*SIGNED_BY_DEVICE.checks[1:]).verify(Evidence(Statement.of_reading(signed)))
    assert failed.value.check == "key-id"


def test_verify_reading_checks_a_known_key() -> None:
    signed = sign_reading(make_reading(SIGNER, 1), SIGNER)
    verify_reading(signed, SIGNER.public_key_der)
    with pytest.raises(VerificationError) as failed:
        verify_reading(signed, OTHER.public_key_der)
    assert failed.value.check == "key-id"
    with pytest.raises(VerificationError) as failed:
        verify_reading(dataclasses.replace(signed, signature=OTHER.sign(signed.reading_bytes)),
                       SIGNER.public_key_der)
    assert failed.value.check == "signature"


def test_key_validity_follows_rotation_in_log_order() -> None:
    rotate = [DeviceLeaf("gw-1", DeviceEvent.ENROL, SIGNER.public_key_der, 1, 0),
              DeviceLeaf("gw-1", DeviceEvent.ROTATE, OTHER.public_key_der, 5, 0)]
    old = sign_reading(make_reading(SIGNER, 4), SIGNER)
    new = sign_reading(make_reading(OTHER, 5), OTHER)
    for signed in (old, new):
        SIGNED_BY_DEVICE.verify(Evidence(Statement.of_reading(signed), rotate))
    stale = sign_reading(make_reading(SIGNER, 5), SIGNER)  # the old key past its rotation
    with pytest.raises(VerificationError) as failed:
        SIGNED_BY_DEVICE.verify(Evidence(Statement.of_reading(stale), rotate))
    assert failed.value.check == "key-id" and failed.value.passed == ["key-validity"]


def test_an_ocmf_statement_has_no_key_id_check() -> None:
    assert OCMF_RECORD.names == ("key-validity", "low-s", "signature")
    leaves = [DeviceLeaf("gw-1", DeviceEvent.ENROL, SIGNER.public_key_der, 1, 0)]
    payload = b'{"FV":"1.0"}'
    OCMF_RECORD.verify(Evidence(Statement("gw-1", 3, payload, SIGNER.sign(payload)), leaves))
    with pytest.raises(VerificationError) as failed:
        OCMF_RECORD.verify(Evidence(Statement("gw-1", 3, payload, OTHER.sign(payload)), leaves))
    assert failed.value.check == "signature"


def test_a_stricter_checkpoint_rule_extends_checkpoint_signed(small_log: SmallLog) -> None:
    # The seam later checkpoint rules (witness cosignatures) use: extend open_note.
    class AtLeast(CheckpointSigned):
        def __init__(self, log_key: NoteSigner, size: int) -> None:
            super().__init__(log_key.verifier)
            self.size = size

        def open_note(self, note: str) -> Checkpoint:
            checkpoint = super().open_note(note)
            if checkpoint.size < self.size:
                raise VerificationError(f"checkpoint size {checkpoint.size} < {self.size}",
                                        check=self.name)
            return checkpoint

    size = len(small_log.leaves)
    policy = AllOf(AtLeast(small_log.log_key, size), DeviceLeavesIncluded(), SIGNED_BY_DEVICE,
                   LeafIncluded())
    policy.verify(_evidence(small_log))
    with pytest.raises(VerificationError) as failed:
        AllOf(AtLeast(small_log.log_key, size + 1), LeafIncluded()).verify(_evidence(small_log))
    assert failed.value.check == "checkpoint" and failed.value.passed == []


def test_logged_leaf_policy_proves_any_leaf(small_log: SmallLog) -> None:
    bundle = small_log.bundle(2)
    device_leaf = bundle.device_leaves[0]  # not a reading: any leaf will do
    policy = logged_leaf_policy(small_log.log_key.verifier)
    policy.verify(Evidence(leaf=device_leaf, checkpoint_note=bundle.checkpoint))
    assert policy.names == ("checkpoint", "inclusion")
    moved = LoggedLeaf(device_leaf.data, device_leaf.index + 2, device_leaf.proof)
    with pytest.raises(VerificationError) as failed:
        policy.verify(Evidence(leaf=moved, checkpoint_note=bundle.checkpoint))
    assert failed.value.check == "inclusion"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # small_log is not mutated
@given(
    part=st.sampled_from(["data", "signature", "proof", "note"]),
    position=st.integers(min_value=0, max_value=10_000),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_mutated_input_fails_with_a_named_check(
    small_log: SmallLog, part: str, position: int, flip: int
) -> None:
    evidence = _evidence(small_log)
    assert evidence.statement is not None and evidence.leaf is not None
    statement, leaf = evidence.statement, evidence.leaf

    def mutated(value: bytes) -> bytes:
        i = position % len(value)
        return value[:i] + bytes([value[i] ^ flip]) + value[i + 1:]

    if part == "data":  # the statement's bytes (the reading) and so its leaf
        evidence.statement = dataclasses.replace(statement, data=mutated(statement.data))
    elif part == "signature":
        evidence.statement = dataclasses.replace(statement, signature=mutated(statement.signature))
    elif part == "proof":
        proof = list(leaf.proof)
        proof[position % len(proof)] = mutated(proof[position % len(proof)])
        evidence.leaf = LoggedLeaf(leaf.data, leaf.index, tuple(proof))
    else:
        note = evidence.checkpoint_note
        assert note is not None
        i = position % len(note)
        evidence.checkpoint_note = note[:i] + chr(ord(note[i]) ^ flip) + note[i + 1:]
    with pytest.raises(VerificationError) as failed:
        bundle_policy(small_log.log_key.verifier).verify(evidence)
    assert failed.value.check in BUNDLE_CHECKS
    assert failed.value.passed == list(BUNDLE_CHECKS[: BUNDLE_CHECKS.index(failed.value.check)])
