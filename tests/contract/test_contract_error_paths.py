"""The refusals of the newer contract formats: receipts, gap declarations, control messages and
acks, cosigner and note keys, witness policy files. Each malformed input raises the contract's
typed error, naming the field or check, never a KeyError or TypeError from inside a parser: a
gateway or verifier fed these bytes must be able to say what was wrong."""

from __future__ import annotations

import base64

import pytest
from meterchain.contract import cbor, signing
from meterchain.contract.checkpoint import Checkpoint, open_checkpoint
from meterchain.contract.control import (
    ACK_V2_TYPE,
    ControlError,
    ControlKeyLeaf,
    SignedAck,
    open_control,
    read_unverified,
    sign_control,
)
from meterchain.contract.cosignature import (
    MAX_TIMESTAMP,
    Cosigner,
    CosignerKey,
    add_signatures,
    cosigned_message,
    verify_cosignatures,
)
from meterchain.contract.errors import (
    EncodingError,
    FieldError,
    KeyValidityError,
    MeterchainError,
    NoteError,
    SignatureError,
)
from meterchain.contract.gap import GAP_MESSAGE_TYPE, GAP_TYPE, GapDeclaration, GapMessage, is_gap_message
from meterchain.contract.message import parse_message
from meterchain.contract.note import NoteSigner, NoteVerifier, split_note, verify_note
from meterchain.contract.receipt import RECEIPT_TYPE, LogInconsistent, LogView, Receipt, receipt_topic
from meterchain.contract.signing import (
    CryptographySigner,
    EcdsaSigner,
    generate_private_key_pem,
    key_id,
    load_public_key,
    load_signer,
    parse_signature,
    public_key_der_from_pem,
    public_key_pem,
)
from meterchain.contract.status import MAX_DRIFT, MAX_METERS, MAX_STATUS_SIZE, GatewayStatus, MeterHealth
from meterchain.contract.tlog_policy import MAX_ENTRIES, PolicyFileError, Witness, WitnessPolicy, parse_policy

from tests.support.witness import ToyLog

LOG = NoteSigner.generate("log.test")
WITNESS = Cosigner.generate("witness.test/w1")
BODY = "log.test\n5\nKgOYRXC8YR82WFbcnVRFIHn/yVo4rxtg0w20Wtq/9Y8=\n"


# ------------------------------------------------------------------ receipts


def _receipt_map(**change: object) -> dict[str, object]:
    fields: dict[str, object] = {"t": RECEIPT_TYPE, "dev": "gw-1", "seq": 5, "entry": b"\x82",
                                 "index": 3, "proof": [b"\x00" * 32], "checkpoint": "note"}
    fields.update(change)
    return {k: v for k, v in fields.items() if v is not None}


@pytest.mark.parametrize(("change", "error", "field"), [
    ({"t": None}, EncodingError, None),
    ({"extra": 1}, EncodingError, None),
    ({"t": "meterchain/receipt/v2"}, FieldError, "t"),
    ({"dev": "gw 1"}, FieldError, "dev"),
    ({"dev": 7}, FieldError, "dev"),
    ({"seq": -1}, FieldError, "seq"),
    ({"index": True}, FieldError, "index"),
    ({"index": 2**53}, FieldError, "index"),
    ({"proof": [b"\x00" * 31]}, FieldError, "proof"),
    ({"proof": [b"\x00" * 32] * 65}, FieldError, "proof"),
    ({"proof": b"\x00" * 32}, FieldError, "proof"),
    ({"entry": "text"}, FieldError, "entry"),
    ({"checkpoint": b"bytes"}, FieldError, "entry"),
])
def test_a_malformed_receipt_names_its_field(change: dict[str, object], error: type[MeterchainError],
                                             field: str | None) -> None:
    with pytest.raises(error) as raised:
        Receipt.from_cbor(cbor.encode(_receipt_map(**change)))
    if field is not None:
        assert raised.value.context["field"] == field
    assert Receipt.from_cbor(cbor.encode(_receipt_map())).seq == 5  # the unchanged map is fine


def test_receipts_go_to_the_devices_own_topic() -> None:
    assert receipt_topic("gw-7") == "meterchain/v1/gw-7/receipts"


def test_a_checkpoint_of_another_log_is_inconsistent_with_the_view() -> None:
    toy, other = ToyLog(), ToyLog(NoteSigner.generate("other.test/log"))
    toy.append(4)
    other.append(6)
    view = LogView()
    view.advance(_opened(toy))
    with pytest.raises(LogInconsistent, match="other.test/log"):
        view.needs(_opened(other))
    assert LogView.from_json(view.to_json()) == view
    assert LogView.from_json(LogView().to_json()) == LogView()


def _opened(toy: ToyLog) -> Checkpoint:
    return Checkpoint.parse_body(split_note(toy.checkpoint())[0])


# ------------------------------------------------------------------ gap declarations


SIGNER = load_signer(generate_private_key_pem())
KID = key_id(SIGNER.public_key_der)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"device": "gw/1"}, "dev"),
    ({"key_id": b"\x00" * 31}, "kid"),
    ({"first": 0}, "first"),
    ({"last": 2}, "first"),  # last before first
    ({"first": 1, "last": 1 + (1 << 16)}, "first"),  # longer than one declaration may span
    ({"time": -5}, "time"),
    ({"last": True}, "last"),
    ({"why": "bored"}, "why"),
])
def test_a_gap_declaration_out_of_bounds_names_its_field(kwargs: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {"device": "gw-1", "key_id": KID, "first": 3, "last": 9,
                                 "time": 1_700_000_000, "why": "outbox-lost"}
    fields.update(kwargs)
    with pytest.raises(FieldError) as raised:
        GapDeclaration(**fields)  # type: ignore[arg-type]
    assert raised.value.context["field"] == field


def test_gap_messages_round_trip_and_refuse_what_is_not_one() -> None:
    declaration = GapDeclaration("gw-1", KID, 3, 9, 1_700_000_000, "outbox-corrupt")
    message = declaration.sign(SIGNER)
    data = message.to_cbor()
    assert is_gap_message(data) and not is_gap_message(b"") and not is_gap_message(b"\x82\x01\x02")
    assert GapMessage.from_cbor(data) == message
    other = load_signer(generate_private_key_pem())
    with pytest.raises(FieldError, match="signer's key id"):
        declaration.sign(other)
    bad_messages = [
        cbor.encode({"t": GAP_MESSAGE_TYPE, "decl": message.declaration_bytes}),
        cbor.encode({"t": "meterchain/gap-message/v9", "decl": message.declaration_bytes, "sig": message.signature}),
        cbor.encode({"t": GAP_MESSAGE_TYPE, "decl": "text", "sig": message.signature}),
        cbor.encode({"t": GAP_MESSAGE_TYPE, "decl": message.declaration_bytes, "sig": b"short"}),
    ]
    for bad in bad_messages:
        with pytest.raises(EncodingError):
            GapMessage.from_cbor(bad)
    decl = cbor.decode(message.declaration_bytes, what="gap", max_size=1024)
    for bad_decl in ({**decl, "t": GAP_TYPE + "x"}, {k: v for k, v in decl.items() if k != "why"}):
        with pytest.raises(EncodingError):
            GapDeclaration.from_cbor(cbor.encode(bad_decl))


# ------------------------------------------------------------------ control messages and acks


CONTROL = NoteSigner.generate("log.test/control")


def test_control_messages_refuse_unknown_types_and_missing_keys() -> None:
    with pytest.raises(ControlError, match="unknown control message type"):
        sign_control("meterchain/nonsense/v1", b"x", [CONTROL])
    with pytest.raises(ControlError, match="at least one control key"):
        sign_control(ACK_V2_TYPE, b"x", [])


def test_a_control_message_that_is_not_one_is_named() -> None:
    payload = SignedAck("gw-1", 4).sign([CONTROL])
    with pytest.raises(ControlError, match="not a signed control message"):
        open_control(b"\xff\xfe", ACK_V2_TYPE, [CONTROL.verifier])
    with pytest.raises(ControlError, match="not a meterchain/other"):
        read_unverified(payload, "meterchain/other")
    text = f"{ACK_V2_TYPE}\nnot base64!\n"
    with pytest.raises(ControlError, match="body is not base64"):
        read_unverified(CONTROL.sign_note(text).encode(), ACK_V2_TYPE)
    stranger = NoteSigner.generate("stranger.test/control")
    with pytest.raises(ControlError, match="no trusted control key"):
        open_control(SignedAck("gw-1", 4).sign([stranger]), ACK_V2_TYPE, [CONTROL.verifier])


def _ack_body(**change: object) -> bytes:
    fields: dict[str, object] = {"t": ACK_V2_TYPE, "dev": "gw-1", "upto": 4, "time": 1_700_000_000,
                                 "rejected": [], "gaps": [], "keys": [str(CONTROL.verifier)]}
    fields.update(change)
    return cbor.encode({k: v for k, v in fields.items() if v is not None})


@pytest.mark.parametrize(("change", "field"), [
    ({"keys": None}, None),
    ({"t": "meterchain/ack/v1"}, "t"),
    ({"dev": ""}, "dev"),
    ({"upto": -1}, "upto"),
    ({"rejected": [[0, "signature", ""]]}, "rejected"),  # sequence numbers begin at 1
    ({"rejected": [[1, "signature"]]}, "rejected"),
    ({"gaps": [[5, 3]]}, "gaps"),
    ({"gaps": "1-3"}, "gaps"),
    ({"keys": [7]}, "keys"),
])
def test_an_ack_body_out_of_bounds_names_its_field(change: dict[str, object], field: str | None) -> None:
    with pytest.raises(EncodingError) as raised:
        SignedAck.from_body(_ack_body(**change))
    assert raised.value.context.get("field") == field
    assert SignedAck.from_body(_ack_body()).upto == 4


def test_an_ack_listing_a_key_that_is_not_one_is_refused() -> None:
    with pytest.raises(NoteError):
        SignedAck.from_body(_ack_body(keys=["not a key"]))


def test_control_key_leaves_refuse_other_events_and_fields() -> None:
    key = str(CONTROL.verifier)
    with pytest.raises(FieldError, match="unknown event"):
        ControlKeyLeaf(key, "revoke", 1)
    with pytest.raises(FieldError, match="time"):
        ControlKeyLeaf(key, "enrol", -1)
    with pytest.raises(FieldError, match="fields must be"):
        ControlKeyLeaf.from_map({"t": "x", "key": key, "event": "enrol"})
    with pytest.raises(FieldError, match="key and event are text"):
        ControlKeyLeaf.from_map({"t": "x", "key": b"k", "event": "enrol", "time": 1})


# ------------------------------------------------------------------ cosigner and note keys


@pytest.mark.parametrize(("text", "why"), [
    ("witness.test/w1+abc", r"reads <name>\+<hash>\+<base64 key>"),
    ("witness.test/w1+00000000+not!base64", "not base64"),
    (f"witness.test/w1+00000000+{base64.b64encode(bytes([4]) + bytes(31)).decode()}", "type 0x04"),
    (f"witness.test/w1+00000000+{base64.b64encode(bytes([1]) + bytes(32)).decode()}", "type 0x04"),
    (f"witness.test/w1+00000000+{base64.b64encode(bytes([4]) + bytes(32)).decode()}", "hash does not match"),
])
def test_a_cosigner_key_that_is_not_one_is_named(text: str, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        CosignerKey.parse(text)


def test_key_names_and_sizes_are_checked_for_both_key_types() -> None:
    good = str(WITNESS.key)
    name, key_hash, b64 = good.split("+", 2)
    with pytest.raises(NoteError, match="hash does not match"):
        CosignerKey.parse(f"{name}+{key_hash}0+{b64}")  # nine hex digits
    for cls in (CosignerKey, NoteVerifier):
        with pytest.raises(NoteError, match="must be non-empty, without spaces"):
            cls("two words", bytes(32))
        with pytest.raises(NoteError, match="32 bytes"):
            cls("name", bytes(31))
    with pytest.raises(NoteError, match="cosigner name"):
        CosignerKey("a+b", bytes(32))
    with pytest.raises(NoteError, match="key name"):
        NoteVerifier("", bytes(32))
    with pytest.raises(NoteError, match="verifier key is not an Ed25519 \\(type 0x01\\)"):
        NoteVerifier.parse(str(WITNESS.key))  # a cosigner key is not a note key


def _with_hash(private: str, key_hash: str) -> str:
    """``PRIVATE+KEY+name+hash+base64`` with another hash (base64 may hold '+' itself)."""
    parts = private.split("+", 4)
    return "+".join([*parts[:3], key_hash, parts[4]])


def test_cosigner_private_keys_refuse_what_is_not_one() -> None:
    text = str(WITNESS)
    assert Cosigner.parse(text).key == WITNESS.key
    with pytest.raises(NoteError, match="PRIVATE\\+KEY"):
        Cosigner.parse(text.replace("PRIVATE+KEY+", "SECRET+KEY+"))
    with pytest.raises(NoteError, match="hash does not match"):
        Cosigner.parse(_with_hash(text, "00000000"))
    with pytest.raises(NoteError, match="seed is 32 bytes"):
        Cosigner("witness.test/w1", bytes(16))
    with pytest.raises(NoteError, match="must not be zero"):
        WITNESS.cosign(BODY, 0)


def test_a_cosignature_of_the_wrong_shape_or_signer_does_not_verify() -> None:
    line = WITNESS.cosign(BODY, 1_780_000_000)
    raw = base64.b64decode(line.split()[-1])[4:]  # timestamp ‖ signature, without the key ID
    assert WITNESS.key.verify(BODY, raw) == 1_780_000_000
    with pytest.raises(NoteError, match="73 bytes, not 72"):
        WITNESS.key.verify(BODY, raw + b"\x00")
    with pytest.raises(NoteError, match="above 2\\^63 - 1"):
        WITNESS.key.verify(BODY, b"\xff" + raw[1:])
    with pytest.raises(NoteError, match="does not verify") as failed:
        WITNESS.key.verify(BODY.replace("5", "6", 1), raw)
    assert failed.value.check == "cosignature"
    for timestamp in (-1, MAX_TIMESTAMP + 1):
        with pytest.raises(NoteError, match="out of range"):
            cosigned_message(BODY, timestamp)
    with pytest.raises(NoteError, match="end with a newline"):
        cosigned_message(BODY.rstrip("\n"), 1)


def test_signature_lines_are_added_only_when_they_are_lines() -> None:
    note = LOG.sign_note(BODY)
    line = WITNESS.cosign(BODY, 1_780_000_000)
    for bad in ("no em dash\n", line.rstrip("\n"), line + line):
        with pytest.raises(NoteError, match="is not one signature line"):
            add_signatures(note, [bad])
    merged = add_signatures(note, [line])
    assert verify_cosignatures(merged, [WITNESS.key]) == {"witness.test/w1": 1_780_000_000}
    impostor = Cosigner.generate("witness.test/w1")  # same name, other key: ignored, not failed
    assert verify_cosignatures(merged, [impostor.key]) == {}


def test_note_signer_keys_and_notes_refuse_what_is_not_one() -> None:
    text = str(LOG)
    assert str(NoteSigner.parse(text).verifier) == str(LOG.verifier)
    with pytest.raises(NoteError, match="PRIVATE\\+KEY"):
        NoteSigner.parse("log.test+00000000+AAAA")
    with pytest.raises(NoteError, match="type 0x01"):
        NoteSigner.parse(str(WITNESS).replace("witness.test/w1", "log.test"))
    with pytest.raises(NoteError, match="hash does not match"):
        NoteSigner.parse(_with_hash(text, "00000000"))
    with pytest.raises(NoteError, match="seed is 32 bytes"):
        NoteSigner("log.test", bytes(8))
    note = LOG.sign_note(BODY)
    other = NoteSigner.generate("log.test")
    with pytest.raises(NoteError, match="no signature by log.test"):
        verify_note(note, other.verifier)
    forged = note.replace(note.split()[-1], base64.b64encode(
        base64.b64decode(note.split()[-1])[:4] + bytes(64)).decode())
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(forged, LOG.verifier)
    with pytest.raises(NoteError, match="larger than"):
        split_note("x" * 20_000)
    with pytest.raises(NoteError, match="signature is too short"):
        split_note(BODY + "\n\u2014 log.test AAAA\n")
    with pytest.raises(NoteError, match="'\u2014 <name> <base64>'"):
        split_note(BODY + "\n\u2014 log.test\n")
    with pytest.raises(NoteError, match="control characters"):
        LOG.sign_note("a\tb\n")


# ------------------------------------------------------------------ witness policy files


@pytest.mark.parametrize(("text", "why"), [
    ("log\nquorum none\n", "log <vkey>"),
    ("log {log} http://a http://b\nquorum none\n", "log <vkey>"),
    ("log {log}\nlog {log}\nquorum none\n", "duplicate log key"),
    ("witness w1\nquorum none\n", "witness <name> <vkey>"),
    ("witness w1 {w1}\ngroup g any\nquorum g\n", "group <name>"),
    ("witness w1 {w1}\ngroup w1 any w1\nquorum w1\n", "already defined"),
    ("quorum\n", "quorum <name>"),
])
def test_policy_lines_with_the_wrong_arguments_are_named(text: str, why: str) -> None:
    with pytest.raises(PolicyFileError, match=why) as raised:
        parse_policy(text.format(log=LOG.verifier, w1=WITNESS.key))
    assert "line" in raised.value.context


def test_a_policy_with_too_many_entries_is_refused() -> None:
    keys = [Cosigner.generate(f"w{i}.test") for i in range(MAX_ENTRIES + 1)]
    text = "".join(f"witness w{i} {c.key}\n" for i, c in enumerate(keys)) + "quorum none\n"
    with pytest.raises(PolicyFileError, match="more than"):
        parse_policy(text)


def test_a_policy_describes_its_quorum_and_finds_witnesses_by_key_name() -> None:
    single = parse_policy(f"witness w1 {WITNESS.key} https://w1.example\nquorum w1\n")
    assert single.describe() == "w1" and parse_policy("quorum none\n").describe() == "no witnesses"
    assert single.witness_named("witness.test/w1") == Witness("w1", WITNESS.key, "https://w1.example")
    assert single.witness_named("witness.test/w9") is None
    assert parse_policy(single.to_text()) == single
    two = WitnessPolicy.k_of_n(1, [Witness("w1", WITNESS.key)], logs=[LOG.verifier])
    assert two.describe() == "1 of w1" and two.logs == ((LOG.verifier, None),)


# ------------------------------------------------------------------ checkpoints and messages


def test_checkpoints_out_of_bounds_are_refused() -> None:
    root = bytes(32)
    for origin, size, digest, why in (("", 1, root, "one non-empty line"), ("a\nb", 1, root, "one non-empty line"),
                                      ("log.test", -1, root, "out of range"), ("log.test", 1, root[:31], "32 bytes")):
        with pytest.raises(NoteError, match=why):
            Checkpoint(origin, size, digest)
    with pytest.raises(NoteError, match="checkpoint root is not base64"):
        Checkpoint.parse_body("log.test\n5\nnot base64!\n")
    foreign = LOG.sign_note(Checkpoint("other.test", 5, root).body())  # signed, but of another log
    with pytest.raises(NoteError, match="other.test"):
        open_checkpoint(foreign, LOG.verifier)
    with pytest.raises(NoteError, match="does not name the origin"):
        Checkpoint("other.test", 5, root).sign(LOG)


def test_a_message_that_is_not_reading_and_signature_is_named() -> None:
    for bad, why in ((cbor.encode([b"reading"]), "must be a CBOR array"),
                     (cbor.encode({"reading": b"r"}), "must be a CBOR array"),
                     (cbor.encode([b"reading", 7]), "both elements must be byte strings")):
        with pytest.raises(EncodingError, match=why):
            parse_message(bad)


# ------------------------------------------------------------------ gateway status


def _status(**change: object) -> GatewayStatus:
    fields: dict[str, object] = {"device": "gw-1", "time": 1_700_000_000, "firmware": "0.9.1", "uptime": 60,
                                 "outbox_depth": 0, "quarantined": 0,
                                 "meters": (MeterHealth("SDM630-0001", 1_700_000_000, 2),)}
    fields.update(change)
    return GatewayStatus(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "field"), [
    ({"device": "gw 1"}, "dev"),
    ({"firmware": "\x01"}, "fw"),
    ({"firmware": "x" * 65}, "fw"),
    ({"meters": (MeterHealth("SDM630-0001", None, None),) * (MAX_METERS + 1)}, "meters"),
    ({"meters": (MeterHealth("bad serial!", None, None),)}, "meter"),
    ({"meters": (MeterHealth("SDM630-0001", None, MAX_DRIFT + 1),)}, "drift"),
    ({"meters": (MeterHealth("SDM630-0001", None, True),)}, "drift"),
])
def test_a_status_out_of_bounds_names_its_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(FieldError) as raised:
        _status(**change)
    assert raised.value.context["field"] == field


def test_a_status_message_of_the_wrong_shape_is_refused() -> None:
    good = cbor.decode(_status().to_cbor(), what="status", max_size=MAX_STATUS_SIZE)
    assert GatewayStatus.from_cbor(cbor.encode(good)) == _status()
    for bad, field in (({k: v for k, v in good.items() if k != "uptime"}, None),
                       ({**good, "t": "meterchain/status/v9"}, "t"),
                       ({**good, "meters": "SDM630-0001"}, "meters"),
                       ({**good, "meters": [{"meter": "SDM630-0001"}]}, "meters")):
        with pytest.raises(EncodingError) as raised:
            GatewayStatus.from_cbor(cbor.encode(bad))
        assert raised.value.context.get("field") == field


# ------------------------------------------------------------------ keys and signatures


def _pem(private_key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                     serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_keys_that_are_not_p256_are_refused_by_both_signers() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    p384 = _pem(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(KeyValidityError, match="not an ECDSA P-256 key"):
        CryptographySigner(_pem(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(KeyValidityError, match="not an ECDSA P-256 key"):
        CryptographySigner(p384)
    with pytest.raises(KeyValidityError, match="not an ECDSA P-256 key"):
        EcdsaSigner(p384)
    for signer_class in (CryptographySigner, EcdsaSigner):
        with pytest.raises(KeyValidityError, match="private key is not"):
            signer_class(b"-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="unknown signing backend"):
        load_signer(generate_private_key_pem(), backend="hsm")
    ed_public = ed25519.Ed25519PrivateKey.generate().public_key()
    from cryptography.hazmat.primitives import serialization

    der = ed_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyValidityError, match="not an ECDSA P-256 key"):
        load_public_key(der)


def test_public_keys_go_to_pem_and_back_and_bad_pem_is_named() -> None:
    assert public_key_der_from_pem(public_key_pem(SIGNER.public_key_der)) == SIGNER.public_key_der
    with pytest.raises(KeyValidityError, match="not a PEM public key"):
        public_key_der_from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SignatureError, match="must be bytes"):
        parse_signature(bytearray(SIGNER.sign(b"x")))  # type: ignore[arg-type]


def test_without_cryptography_keys_come_from_ecdsa_and_the_rest_says_what_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "HAVE_CRYPTOGRAPHY", False)
    pem = generate_private_key_pem()  # a gateway with the pure-Python fallback only
    signer = load_signer(pem)
    assert isinstance(signer, EcdsaSigner)
    data = b"reading"
    monkeypatch.setattr(signing, "HAVE_CRYPTOGRAPHY", True)
    signing.verify_signature(signer.public_key_der, data, signer.sign(data))
    monkeypatch.setattr(signing, "HAVE_CRYPTOGRAPHY", False)
    with pytest.raises(RuntimeError, match="cryptography"):
        public_key_der_from_pem(public_key_pem(SIGNER.public_key_der))
