"""Leaves, signed notes, checkpoints, the batch chain and key validity."""

from __future__ import annotations

import base64

import pytest
from meterchain.contract import cbor, merkle, signing
from meterchain.contract.batch import (
    BatchHeader,
    ChainError,
    SignedBatchHeader,
    next_header,
    verify_chain,
)
from meterchain.contract.checkpoint import Checkpoint, open_checkpoint
from meterchain.contract.errors import EncodingError, FieldError, KeyValidityError, NoteError
from meterchain.contract.leaves import (
    DeviceEvent,
    DeviceLeaf,
    SettlementLeaf,
    parse_leaf,
    valid_key,
)
from meterchain.contract.message import SignedReading, sign_reading
from meterchain.contract.note import NoteSigner, NoteVerifier, split_note, verify_note

from tests.support.contract import make_reading

C2SP_KEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZX"
    "sYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
KEY = signing.CryptographySigner(signing.generate_private_key_pem())
KEY2 = signing.CryptographySigner(signing.generate_private_key_pem())


def test_c2sp_signed_note_vector_verifies() -> None:
    verifier = NoteVerifier.parse(C2SP_KEY)
    assert str(verifier) == C2SP_KEY
    assert verify_note(C2SP_NOTE, verifier) == "This is an example message.\n"
    with pytest.raises(NoteError):
        verify_note(C2SP_NOTE.replace("example message", "exemplary message"), verifier)


def test_note_keys_round_trip_and_reject_a_wrong_hash() -> None:
    signer = NoteSigner.generate("log.example")
    assert str(NoteSigner.parse(str(signer)).verifier) == str(signer.verifier)
    name, _, rest = str(signer.verifier).partition("+")
    with pytest.raises(NoteError):
        NoteVerifier.parse(f"{name}+00000000+{rest.partition('+')[2]}")


@pytest.mark.parametrize(
    "note",
    [
        "no blank line\n\u2014 a AAAAAAA=\n",
        "text\n\n- a AAAAAAAA\n",
        "text\n\n\u2014 a not-base64!\n",
        "text\n\n",
        "text\n\n\u2014 a AAAAAAAA",
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(NoteError):
        split_note(note)


def test_checkpoint_is_a_c2sp_checkpoint() -> None:
    signer = NoteSigner.generate("log.example")
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(b"a")])
    note = Checkpoint("log.example", 1, root).sign(signer)
    lines = note.split("\n")
    assert lines[:3] == ["log.example", "1", base64.b64encode(root).decode()]
    assert lines[3] == "" and lines[4].startswith("\u2014 log.example ")
    assert open_checkpoint(note, signer.verifier) == Checkpoint("log.example", 1, root)
    with pytest.raises(NoteError):  # another log's key
        open_checkpoint(note, NoteSigner.generate("log.example").verifier)
    with pytest.raises(NoteError):
        Checkpoint("other.origin", 1, root).sign(signer)


@pytest.mark.parametrize("body", ["o\n01\nAAAA\n", "o\n1\n", "o\n1\nAAAA\nextension\n", "o\n-1\nAAAA\n"])
def test_checkpoint_bodies_are_strict(body: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse_body(body)


def test_device_leaf_round_trip_and_kid_check() -> None:
    leaf = DeviceLeaf("gw-1", DeviceEvent.ENROL, KEY.public_key_der, 1, 1_700_000_000)
    assert parse_leaf(leaf.to_cbor()) == leaf
    obj = cbor.decode(leaf.to_cbor())
    assert isinstance(obj, dict)
    obj["kid"] = bytes(32)
    with pytest.raises(FieldError):
        parse_leaf(cbor.encode(obj))
    with pytest.raises(KeyValidityError):
        DeviceLeaf("gw-1", DeviceEvent.ENROL, b"not a key", 1, 0)


def test_leaf_kinds_are_told_apart() -> None:
    message = sign_reading(make_reading(KEY, 1), KEY).to_cbor()
    assert isinstance(parse_leaf(message), SignedReading)
    assert isinstance(parse_leaf(cbor.encode({"t": "meterchain/settlement/v1", "x": 1})), SettlementLeaf)
    for junk in (b"", cbor.encode({"t": "meterchain/other/v1"}), cbor.encode([1, 2, 3])):
        with pytest.raises(EncodingError):
            parse_leaf(junk)


def test_key_validity_follows_rotation_and_revocation() -> None:
    enrol = DeviceLeaf("gw-1", DeviceEvent.ENROL, KEY.public_key_der, 1, 0)
    rotate = DeviceLeaf("gw-1", DeviceEvent.ROTATE, KEY2.public_key_der, 100, 0)
    revoke = DeviceLeaf("gw-1", DeviceEvent.REVOKE, KEY2.public_key_der, 500, 0)
    history = [enrol, rotate, revoke]
    assert valid_key(history, "gw-1", 1) is enrol
    assert valid_key(history, "gw-1", 99) is enrol  # the old key stays valid below the rotation
    assert valid_key(history, "gw-1", 100) is rotate
    assert valid_key(history, "gw-1", 499) is rotate
    assert valid_key(history, "gw-1", 500) is None
    assert valid_key(history, "gw-2", 1) is None


def _chain(signer: NoteSigner, n: int) -> list[SignedBatchHeader]:
    headers, prev = [], None
    for i in range(n):
        prev = next_header(prev, size=(i + 1) * 10, root=bytes([i]) * 32, sealed=1000 + i)
        headers.append(SignedBatchHeader.sign(prev, signer))
    return headers


def test_batch_chain_walks_and_names_the_broken_header() -> None:
    signer = NoteSigner.generate("log.example")
    chain = _chain(signer, 5)
    assert verify_chain(chain, signer.verifier) == chain[-1].header
    for signed in chain:
        assert SignedBatchHeader.from_cbor(signed.to_cbor()) == signed
    h = chain[2].header
    forged = BatchHeader(h.index, h.prev, h.first, h.size, bytes(32), h.sealed)
    tampered = chain[:2] + [SignedBatchHeader(forged, chain[2].signature)] + chain[3:]
    with pytest.raises(ChainError) as err:
        verify_chain(tampered, signer.verifier)
    assert err.value.context["batch"] == 2
    resigned = chain[:2] + [SignedBatchHeader.sign(forged, signer)] + chain[3:]
    with pytest.raises(ChainError) as err:  # re-signing cannot hide it: batch 3's prev no longer matches
        verify_chain(resigned, signer.verifier)
    assert err.value.context["batch"] == 3
    with pytest.raises(ChainError):
        verify_chain(chain[1:], signer.verifier)


def test_batch_header_bounds() -> None:
    with pytest.raises(FieldError):
        BatchHeader(0, bytes(32), 5, 5, bytes(32), 0)  # empty batch
    with pytest.raises(FieldError):
        BatchHeader(0, bytes(31), 0, 5, bytes(32), 0)
