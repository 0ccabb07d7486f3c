"""C2SP tlog-cosignature (Ed25519, type 0x04), signed-note rules for cosignatures, tlog-policy
files and the ``witnesses`` check of the verification policy. Each MUST checked is quoted."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.cosignature import (
    Cosigner,
    CosignerKey,
    add_signatures,
    cosigned_message,
    verify_cosignatures,
)
from meterchain.contract.errors import NoteError
from meterchain.contract.note import NoteSigner
from meterchain.contract.policy import CheckpointSigned, Evidence, VerificationError, checkpoint_policy
from meterchain.contract.tlog_policy import PolicyFileError, Witness, WitnessPolicy, parse_policy

LOG = NoteSigner(("example.com/behind-the-sofa"), bytes(range(32)))
BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def witnesses(n: int) -> list[Cosigner]:
    return [Cosigner(f"witness.example/w{i}", bytes([i]) * 32) for i in range(1, n + 1)]


def cosigned(note: str, cosigners: list[Cosigner], timestamp: int = 1679315147) -> str:
    text = note[: note.rfind("\n\n") + 1]
    return add_signatures(note, [c.cosign(text, timestamp) for c in cosigners])


# "The key ID for Ed25519 cosignatures MUST be computed as
#  SHA-256(<name> || "\n" || 0x04 || 32-byte Ed25519 cosigner public key)[:4]"
def test_key_id() -> None:
    key = witnesses(1)[0].key
    digest = hashlib.sha256(b"witness.example/w1\n\x04" + key.public_key).digest()
    assert key.key_hash == int.from_bytes(digest[:4], "big")
    # vkeys: "signature type 0x04 and the 32-byte Ed25519 cosigner public key"
    assert str(key) == f"witness.example/w1+{digest[:4].hex()}+" + base64.b64encode(b"\x04" + key.public_key).decode()
    assert CosignerKey.parse(str(key)) == key
    with pytest.raises(NoteError):
        CosignerKey.parse(str(LOG.verifier))  # a type 0x01 key is not a cosigner key


# "The signed message MUST be two newline (U+000A) terminated lines (one header line and one
# timestamp line) followed by the whole note body of the cosigned checkpoint" / "The header line
# MUST be the fixed string `cosignature/v1`" / "The timestamp line MUST consist of the string
# `time`, a single space (0x20), and timestamped_signature.timestamp encoded as an ASCII decimal
# with no leading zeroes." (the spec's own example)
def test_signed_message_is_the_specs_example() -> None:
    assert cosigned_message(BODY, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")


# "The signature MUST be a timestamped_signature structure" (u64 big-endian timestamp, then the
# 64-byte Ed25519 signature over the message above), after the 4-byte key ID (signed-note).
def test_signature_layout() -> None:
    cosigner = witnesses(1)[0]
    line = cosigner.cosign(BODY, 1679315147)
    assert line.startswith("\u2014 witness.example/w1 ") and line.endswith("\n")
    raw = base64.b64decode(line.split(" ")[2])
    assert len(raw) == 4 + 8 + 64
    assert struct.unpack(">IQ", raw[:12]) == (cosigner.key.key_hash, 1679315147)
    Ed25519PublicKey.from_public_bytes(cosigner.key.public_key).verify(raw[12:], cosigned_message(BODY, 1679315147))


# tlog-witness: "The cosignature MUST NOT omit the timestamp, i.e. the timestamp MUST NOT be zero."
# tlog-cosignature: "It MUST NOT exceed 2^63 - 1".
def test_timestamp_bounds() -> None:
    with pytest.raises(NoteError):
        witnesses(1)[0].cosign(BODY, 0)
    with pytest.raises(NoteError):
        cosigned_message(BODY, 2**63)


# signed-note: "Verifiers MUST ignore signatures from unknown keys, even if they share a name or
# ID (but not both) with a known key. If the key name and ID match a known key, verifiers MUST
# verify the signature."
def test_unknown_keys_ignored_known_keys_verified() -> None:
    w1, w2 = witnesses(2)
    note = cosigned(Checkpoint.parse_body(BODY).sign(LOG), [w1, w2])
    assert verify_cosignatures(note, [w1.key]) == {"witness.example/w1": 1679315147}
    same_name = Cosigner("witness.example/w1", b"\x09" * 32)
    assert verify_cosignatures(note, [same_name.key]) == {}
    # the log's own signature (type 0x01, same body) is not a cosignature of any witness key
    assert verify_cosignatures(note, [CosignerKey(LOG.name, LOG.verifier.public_key)]) == {}
    # a line with w1's name and ID but a broken signature is verified, and fails
    line = w1.cosign(BODY, 1679315147)
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[-1] ^= 1
    tampered = note.replace(line, f"\u2014 witness.example/w1 {base64.b64encode(bytes(raw)).decode()}\n")
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignatures(tampered, [w1.key])
    # a cosignature of another timestamp than the one it carries does not verify
    other = w1.cosign(BODY, 1679315148)
    raw = bytearray(base64.b64decode(other.split(" ")[2]))
    raw[4:12] = struct.pack(">Q", 1679315147)
    bad = Checkpoint.parse_body(BODY).sign(LOG) + f"\u2014 witness.example/w1 {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(NoteError):
        verify_cosignatures(bad, [w1.key])


# signed-note: verifiers "MUST accept at least up to 16 signatures".
def test_sixteen_signatures_accepted() -> None:
    many = witnesses(15)
    note = cosigned(Checkpoint.parse_body(BODY).sign(LOG), many)
    assert len(verify_cosignatures(note, [c.key for c in many])) == 15


def test_private_key_round_trip() -> None:
    cosigner = witnesses(1)[0]
    assert str(Cosigner.parse(str(cosigner))) == str(cosigner)
    assert str(cosigner).startswith("PRIVATE+KEY+witness.example/w1+")


def test_add_signatures_keeps_each_line_once() -> None:
    w1 = witnesses(1)[0]
    note = Checkpoint.parse_body(BODY).sign(LOG)
    line = w1.cosign(BODY, 5)
    assert add_signatures(add_signatures(note, [line]), [line]) == note + line
    with pytest.raises(NoteError):
        add_signatures(note, ["not a signature\n"])


# tlog-policy: the example's syntax (groups of groups, thresholds, any, all), and its rules.
def test_policy_file_and_quorum() -> None:
    x1, x2, x3, y1 = witnesses(4)
    text = (f"# comment\nlog {LOG.verifier}\n\n"
            f"witness X1 {x1.key}\nwitness X2 {x2.key} https://x2.example/\n\twitness X3 {x3.key}\n"
            "group X-witnesses 2 X1 X2 X3\n"
            f"witness Y1 {y1.key}\ngroup Y-witnesses any Y1\n"
            "group X-and-Y all X-witnesses Y-witnesses\nquorum X-and-Y\n")
    policy = parse_policy(text)
    assert policy.witnesses["X2"].url == "https://x2.example/"
    assert policy.satisfied({x1.name, x2.name, y1.name})
    assert not policy.satisfied({x1.name, x2.name, x3.name})
    assert not policy.satisfied({x1.name, y1.name})
    assert parse_policy(policy.to_text()) == policy
    assert parse_policy("quorum none\n").satisfied(set())


@pytest.mark.parametrize(("text", "why"), [
    ("", "quorum line"),
    ("quorum w\n", "not defined"),
    ("quorum none\nquorum none\n", "exactly one"),
    ("witness a {k1}\ngroup g 3 a\nquorum g\n", "threshold"),
    ("witness a {k1}\ngroup g 0 a\nquorum g\n", "threshold"),
    ("witness a {k1}\ngroup g any a a\nquorum g\n", "at most once"),
    ("group g any a\nwitness a {k1}\nquorum g\n", "earlier line"),
    ("witness a {k1}\nwitness b {k1}\nquorum a\n", "duplicate"),
    ("witness a {k1}\nwitness a {k2}\nquorum a\n", "already defined"),
    ("witness none {k1}\nquorum none\n", "already defined"),
    ("frobnicate\nquorum none\n", "unknown keyword"),
    ("witness a {log}\nquorum a\n", "type 0x04"),
    ("quorum none\x0b\n", "control character"),
])
def test_policy_file_errors(text: str, why: str) -> None:
    w1, w2 = witnesses(2)
    with pytest.raises(PolicyFileError, match=why):
        parse_policy(text.format(k1=w1.key, k2=w2.key, log=LOG.verifier))


# The `witnesses` check: after `checkpoint`, a k-of-n quorum; it names who cosigned.
def test_witness_quorum_check() -> None:
    w = witnesses(3)
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", c.key) for i, c in enumerate(w, 1)])
    note = Checkpoint.parse_body(BODY).sign(LOG)
    checks = checkpoint_policy(LOG.verifier, policy)
    assert checks.names == ("checkpoint", "witnesses")
    evidence = Evidence(checkpoint_note=cosigned(note, [w[0], w[2]]))
    checks.verify(evidence)
    assert evidence.cosigners == ("w1", "w3") and evidence.passed == ["checkpoint", "witnesses"]
    short = Evidence(checkpoint_note=cosigned(note, [w[1]]))
    with pytest.raises(VerificationError) as failed:
        checks.verify(short)
    assert failed.value.check == "witnesses" and failed.value.passed == ["checkpoint"]
    assert "needs 2 of w1, w2, w3, cosigned by w2" in str(failed.value)
    assert failed.value.context["missing"] == ["w1", "w3"]
    # no policy: the checkpoint check alone, as before
    assert checkpoint_policy(LOG.verifier).names == (CheckpointSigned.name,)
