"""Conformance of ``meterchain witness`` to C2SP tlog-witness (add-checkpoint, the monitoring
checkpoint): every MUST checked here is quoted above its test, with the request body and the
status code and body of the answer. The witness runs in process (its ASGI app over httpx)."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import httpx
import pytest
from meterchain.contract.cosignature import Cosigner, verify_cosignatures
from meterchain.contract.errors import NoteError
from meterchain.contract.merkle import EMPTY_ROOT
from meterchain.contract.note import NoteSigner, split_note
from meterchain.witness.config import WitnessConfig
from meterchain.witness.http import WitnessApp
from meterchain.witness.store import WitnessStore

from tests.support.witness import ORIGIN, ToyLog, add_checkpoint_body, origin_hash

NOW = 1_780_000_000


@pytest.fixture
def log() -> ToyLog:
    toy = ToyLog()
    toy.append(10)
    return toy


@pytest.fixture
def cosigner() -> Cosigner:
    return Cosigner.generate("witness.test/w1")


@pytest.fixture
def store(tmp_path: Path) -> WitnessStore:
    return WitnessStore(tmp_path / "w.db", clock=lambda: NOW)


@pytest.fixture
async def client(log: ToyLog, cosigner: Cosigner, store: WitnessStore, tmp_path: Path):
    config = WitnessConfig(cosigner, tmp_path / "w.db", "127.0.0.1", 0, "", {ORIGIN: (log.signer.verifier,)})
    transport = httpx.ASGITransport(app=WitnessApp(config, store))
    async with httpx.AsyncClient(transport=transport, base_url="http://witness") as http:
        yield http


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/add-checkpoint", content=body)


# "The witness MUST verify the checkpoint signature against the public key(s) it trusts for the
# checkpoint origin [...]" and "If all the checks above pass, the witness MUST update its record
# of the latest cosigned checkpoint and respond with a "200 Success" HTTP status code. The
# response body MUST be a sequence of one or more note signature lines, each starting with the
# `—` character (U+2014) and ending with a newline character (U+000A). The signatures MUST be
# cosignatures from the witness key(s) on the checkpoint."
# "First contact": "a client [...] MAY initially make a request with a old size of zero".
async def test_first_contact_old_zero_no_proof_is_cosigned(client, log, cosigner, store) -> None:
    answer = await post(client, log.request(0))
    assert answer.status_code == 200
    assert answer.text.startswith("\u2014 witness.test/w1 ") and answer.text.endswith("\n")
    assert answer.text.count("\n") == 1
    # "To parse the response, the client MAY concatenate it to the checkpoint, and use a note
    # verification function configured with the witness keys it trusts."
    signed = verify_cosignatures(log.checkpoint() + answer.text, [cosigner.key])
    assert signed == {"witness.test/w1": NOW}
    assert store.latest(ORIGIN).size == 10


# "The cosignature MUST NOT omit the timestamp, i.e. the timestamp MUST NOT be zero."
async def test_cosignature_timestamp_is_not_zero(client, log) -> None:
    answer = await post(client, log.request(0))
    raw = base64.b64decode(answer.text.split(" ")[2])
    assert struct.unpack(">Q", raw[4:12])[0] == NOW != 0


# "Otherwise, the consistency proof lines MUST encode a Merkle Consistency Proof from the old
# size to the checkpoint size according to RFC 6962, Section 2.1.2."
async def test_consistent_extension_is_cosigned(client, log, cosigner) -> None:
    assert (await post(client, log.request(0))).status_code == 200
    log.append(7)
    answer = await post(client, log.request(10))
    assert answer.status_code == 200
    assert verify_cosignatures(log.checkpoint() + answer.text, [cosigner.key])


# "If the checkpoint origin is unknown, the witness MUST respond with a "404 Not Found" HTTP
# status code."
async def test_unknown_origin_is_404(client) -> None:
    stranger = ToyLog(NoteSigner.generate("elsewhere.test/log"))
    stranger.append(3)
    answer = await post(client, stranger.request(0))
    assert answer.status_code == 404
    assert "unknown log origin 'elsewhere.test/log'" in answer.text


# "The witness MUST respond with a "403 Forbidden" HTTP status code if either no signature from
# a trusted key for the origin is present [...]"; "it MUST ignore signatures from unknown keys".
async def test_no_trusted_signature_is_403(client, log) -> None:
    impostor = ToyLog(NoteSigner.generate(ORIGIN), list(log.leaves))
    answer = await post(client, impostor.request(0))
    assert answer.status_code == 403
    assert "no signature by a trusted key" in answer.text


# "[...] or a signature line's key name and ID match a trusted key but the signature itself
# fails to verify"
async def test_trusted_key_bad_signature_is_403(client, log) -> None:
    note = log.checkpoint()
    text, _ = split_note(note)
    line = note[len(text) + 1:]
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[-1] ^= 1
    forged = text + "\n" + f"\u2014 {ORIGIN} {base64.b64encode(bytes(raw)).decode()}\n"
    answer = await post(client, add_checkpoint_body(0, [], forged))
    assert answer.status_code == 403
    assert "does not verify" in answer.text


# Unknown signatures are ignored, not refused: a note signed by the log and by a stranger.
async def test_unknown_extra_signature_is_ignored(client, log) -> None:
    stranger = NoteSigner.generate("someone.test/else")
    note = log.checkpoint()
    extra = stranger.sign_note(split_note(note)[0]).rsplit("\n\n", 1)[1]
    answer = await post(client, add_checkpoint_body(0, [], note + extra))
    assert answer.status_code == 200


# "The old size MUST be equal to or lower than the checkpoint size. Otherwise, the witness MUST
# respond with a "400 Bad Request" HTTP status code."
async def test_old_size_above_checkpoint_is_400(client, log) -> None:
    answer = await post(client, add_checkpoint_body(11, [], log.checkpoint()))
    assert answer.status_code == 400
    assert "old size 11 is larger than the checkpoint's size 10" in answer.text


# "The witness MUST check that the old size matches the size of the latest checkpoint it
# cosigned for the checkpoint's origin (or zero if it never cosigned a checkpoint for that
# origin). If it doesn't match, the witness MUST respond with a "409 Conflict" HTTP status code.
# The response body MUST consist of the tree size of the latest cosigned checkpoint in decimal,
# followed by a newline (U+000A). The response MUST have a Content-Type of text/x.tlog.size."
async def test_stale_old_size_is_409_with_latest_size(client, log) -> None:
    assert (await post(client, log.request(0))).status_code == 200
    log.append(5)
    answer = await post(client, log.request(4))
    assert answer.status_code == 409
    assert answer.text == "10\n"
    assert answer.headers["content-type"] == "text/x.tlog.size"


async def test_old_size_never_cosigned_is_409_with_zero(client, log) -> None:
    answer = await post(client, log.request(4))
    assert (answer.status_code, answer.text, answer.headers["content-type"]) == (409, "0\n", "text/x.tlog.size")


# "A checkpoint of size zero MUST have the root hash of the empty tree [...]. Otherwise, the
# witness MUST respond with a "422 Unprocessable Entity" HTTP status code."
async def test_empty_tree_with_another_root_is_422(client, log) -> None:
    from meterchain.contract.checkpoint import Checkpoint

    bad = Checkpoint(ORIGIN, 0, b"\x01" * 32).sign(log.signer)
    assert (await post(client, add_checkpoint_body(0, [], bad))).status_code == 422
    good = Checkpoint(ORIGIN, 0, EMPTY_ROOT).sign(log.signer)
    assert (await post(client, add_checkpoint_body(0, [], good))).status_code == 200


# "If the proof is not empty when the old size is zero [...] the witness MUST respond with a
# "422 Unprocessable Entity" HTTP status code."
async def test_proof_with_old_size_zero_is_422(client, log) -> None:
    answer = await post(client, log.request(0, proof=[b"\x00" * 32]))
    assert answer.status_code == 422
    assert "old size 0 takes no consistency proof" in answer.text


# "[...] or if a Merkle Consistency Proof doesn't verify, the witness MUST respond with a "422
# Unprocessable Entity" HTTP status code."
async def test_bad_consistency_proof_is_422(client, log) -> None:
    assert (await post(client, log.request(0))).status_code == 200
    fork = log.fork()
    fork.leaves[3] = b"\x07" * 32  # rewrite history: not consistent with size 10
    fork.append(6)
    answer = await post(client, fork.request(10))
    assert answer.status_code == 422
    assert "does not verify" in answer.text
    log.append(6)
    proof = log.proof(10)
    proof[0] = bytes(32)
    assert (await post(client, log.request(10, proof=proof))).status_code == 422


# "If the old size matches the checkpoint size, the witness MUST check that the root hashes are
# also identical. If they don't match, the witness MUST respond with a "422 Unprocessable
# Entity" HTTP status code." (a split view: two checkpoints of one size)
async def test_same_size_other_root_is_422_and_same_root_is_200(client, log, store) -> None:
    assert (await post(client, log.request(0))).status_code == 200
    split = ToyLog(log.signer, list(log.leaves))
    split.leaves[9] = b"\x09" * 32
    answer = await post(client, add_checkpoint_body(10, [], split.checkpoint()))
    assert answer.status_code == 422
    assert "size 10 was cosigned with another root" in answer.text
    # "the witness MAY log the request even if the checkpoint fails one of the consistency
    # checks above (but MUST NOT cosign the checkpoint)"
    assert [(r[1], r[3]) for r in store.refused(ORIGIN)] == [(10, 422)]
    assert store.latest(ORIGIN).root == log.root()
    assert (await post(client, log.request(10))).status_code == 200


# "The request MUST be an HTTP POST." / the body's grammar: malformed requests are 400.
@pytest.mark.parametrize("body", [
    b"old 01\n\n", b"old -1\n\n", b"new 0\n\n", b"old 0\nnot base64!\n\n", b"old 0\n", b"\xff\xfe",
    b"old 0\n" + b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n" * 64 + b"\n",
    b"old 0\n\nnot a checkpoint\n",
])
async def test_malformed_requests_are_400(client, log, body) -> None:
    if body.endswith(b"\n\n"):
        body += log.checkpoint().encode()
    answer = await post(client, body)
    assert answer.status_code == 400, answer.text


async def test_get_add_checkpoint_is_405(client) -> None:
    assert (await client.get("/add-checkpoint")).status_code == 405


# "The response body MUST be a checkpoint for the log identified by the origin, and it MUST
# include the cosignature(s) from the witness's key(s) that were returned from add-checkpoint
# and the cosignature from the log key(s) that the witness verified." / "If the witness has
# never cosigned a checkpoint for that log, it MUST respond with a "404 Not Found"".
async def test_monitoring_checkpoint(client, log, cosigner) -> None:
    assert (await client.get(f"/{origin_hash()}/checkpoint")).status_code == 404
    cosignature = (await post(client, log.request(0))).text
    answer = await client.get(f"/{origin_hash()}/checkpoint")
    assert answer.status_code == 200
    assert answer.text == log.checkpoint() + cosignature
    assert verify_cosignatures(answer.text, [cosigner.key])


# "The witness MUST persist the new checkpoint before responding": a new store on the same file
# (a restarted witness) knows the latest size.
async def test_state_survives_a_restart(client, log, tmp_path, cosigner) -> None:
    assert (await post(client, log.request(0))).status_code == 200
    again = WitnessStore(tmp_path / "w.db")
    assert again.latest(ORIGIN).size == 10


# signed-note: "Signed notes MUST be valid UTF-8 and MUST NOT contain any ASCII control
# characters (those below U+0020) other than newline." A checkpoint that is not a valid note is
# a malformed request: 400, nothing stored.
@pytest.mark.parametrize("note", [
    "meterchain.test/log\n10\nAAAA\x07\n\n\u2014 meterchain.test/log AAAAAAAA\n",
    "meterchain.test/log\n10\n",  # no blank line, no signature lines
    "meterchain.test/log\n10\nrootline\n\n\u2014 two words here AAAAAAAA\n",
])
async def test_checkpoint_that_is_not_a_signed_note_is_400(client, store, note) -> None:
    answer = await post(client, add_checkpoint_body(0, [], note))
    assert answer.status_code == 400
    assert answer.text.startswith("not a checkpoint")
    assert store.latest(ORIGIN) is None


async def test_request_body_not_utf8_is_400(client, log) -> None:
    answer = await post(client, b"old 0\n\n" + log.checkpoint().encode().replace(b"10", b"1\xff"))
    assert (answer.status_code, answer.text) == (400, "request body is not UTF-8\n")


# Extension lines: "Extension lines MAY be included in the checkpoint by the log, and if present
# MUST be included in the cosigned message." (tlog-cosignature)
async def test_extension_lines_are_cosigned(client, log, cosigner) -> None:
    text = f"{ORIGIN}\n10\n{base64.b64encode(log.root()).decode()}\nextension line\n"
    note = log.signer.sign_note(text)
    answer = await post(client, add_checkpoint_body(0, [], note))
    assert answer.status_code == 200
    assert verify_cosignatures(note + answer.text, [cosigner.key])
    without = log.checkpoint()  # the same tree head without the extension line
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignatures(without + answer.text, [cosigner.key])


async def test_monitoring_checkpoint_of_an_unknown_origin_hash_is_404(client) -> None:
    assert (await client.get(f"/{'0' * 64}/checkpoint")).status_code == 404
    assert (await client.get("/nothing/here")).status_code == 404
