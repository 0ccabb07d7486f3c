"""Receipts and a gateway's view of the log (contract/receipt.py): a receipt proves one reading
under a cosigned checkpoint; the view catches a rollback, a fork at one size and a larger tree
that is not an extension, each as LogInconsistent."""

from __future__ import annotations

import pytest
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.cosignature import Cosigner, add_signatures
from meterchain.contract.errors import FieldError, MeterchainError
from meterchain.contract.merkle import inclusion_proof, leaf_hash
from meterchain.contract.message import sign_reading
from meterchain.contract.note import split_note
from meterchain.contract.policy import VerificationError
from meterchain.contract.receipt import LogInconsistent, LogView, Receipt, verify_receipt
from meterchain.contract.signing import generate_private_key_pem, load_signer
from meterchain.contract.tlog_policy import Witness, WitnessPolicy

from tests.support.contract import make_reading
from tests.support.witness import ToyLog

WITNESSES = [Cosigner.generate(f"witness.test/w{i}") for i in (1, 2, 3)]
POLICY = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", c.key) for i, c in enumerate(WITNESSES, 1)])


def cosigned(toy: ToyLog, by: list[Cosigner], size: int | None = None) -> str:
    note = toy.checkpoint(size)
    return add_signatures(note, [c.cosign(split_note(note)[0], 1_780_000_000) for c in by])


def opened(toy: ToyLog, size: int | None = None) -> Checkpoint:
    return Checkpoint.parse_body(split_note(toy.checkpoint(size))[0])


def test_receipt_round_trip_and_verification() -> None:
    signer = load_signer(generate_private_key_pem())
    entry = sign_reading(make_reading(signer, 5), signer).to_cbor()
    toy = ToyLog()
    toy.append(9)
    toy.leaves[3] = leaf_hash(entry)
    receipt = Receipt("gw-1", 5, entry, 3, tuple(inclusion_proof(3, toy.leaves)), cosigned(toy, WITNESSES[:2]))
    assert Receipt.from_cbor(receipt.to_cbor()) == receipt
    assert verify_receipt(receipt, toy.signer.verifier, POLICY).size == 9
    short = Receipt("gw-1", 5, entry, 3, receipt.proof, cosigned(toy, WITNESSES[:1]))
    with pytest.raises(VerificationError) as failed:
        verify_receipt(short, toy.signer.verifier, POLICY)
    assert failed.value.check == "witnesses"
    with pytest.raises(VerificationError) as failed:
        verify_receipt(Receipt("gw-1", 5, entry, 4, receipt.proof, receipt.checkpoint), toy.signer.verifier)
    assert failed.value.check == "inclusion"
    with pytest.raises(FieldError):
        verify_receipt(Receipt("gw-1", 6, entry, 3, receipt.proof, receipt.checkpoint), toy.signer.verifier)
    with pytest.raises(MeterchainError):
        Receipt.from_cbor(receipt.to_cbor()[:-3])


def test_log_view_follows_extensions_and_catches_forks_and_rollbacks() -> None:
    toy = ToyLog()
    toy.append(10)
    view = LogView()
    view.advance(opened(toy))
    toy.append(6)
    assert view.needs(opened(toy)) == (10, 16)
    view.advance(opened(toy), toy.proof(10))
    assert view.newest.size == 16
    # an older checkpoint is proven against the newest and does not move it back
    assert view.needs(opened(toy, 12)) == (12, 16)
    view.advance(opened(toy, 12), toy.proof(12, 16))
    assert view.newest.size == 16
    assert LogView.from_json(view.to_json()) == view

    fork = toy.fork()
    fork.leaves[15] = b"\x01" * 32
    with pytest.raises(LogInconsistent, match="different roots"):
        view.needs(opened(fork))
    fork.append(4)  # larger, not an extension: its proof cannot verify
    with pytest.raises(LogInconsistent, match="not consistent"):
        view.advance(opened(fork), fork.proof(16))
    rolled = toy.fork()
    rolled.leaves[3] = b"\x02" * 32  # an older size of another history: a rollback to a fork
    with pytest.raises(LogInconsistent):
        view.advance(opened(rolled, 12), toy.proof(12, 16))
    assert view.newest.size == 16
