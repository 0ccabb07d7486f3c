"""The add-checkpoint protocol of C2SP tlog-witness, sans IO: parse a request body, decide.

:func:`parse_request` turns the body into an :class:`AddCheckpoint`; :func:`open_signed` checks
the origin and the log's signature; :func:`check_transition` checks the request against the
latest checkpoint this witness cosigned for that origin (the caller holds it locked, store.py).
Each refusal is a :class:`WitnessRefusal` carrying the HTTP status, body and content type the
spec gives, so the HTTP shell only copies them out. The order of the checks is the spec's:
malformed 400, unknown origin 404, untrusted signature 403, old size above the checkpoint's
400, old size not the latest cosigned 409 (body: that size), then 422 for an empty tree with
another root, a proof where none belongs, a proof that does not verify, or a root that differs
at an equal size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.errors import MeterchainError
from meterchain.contract.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from meterchain.contract.note import NoteVerifier, Signature, split_note, strict_b64decode

#: tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES = 63
#: A checkpoint with 16 Ed25519 signatures is < 3 KiB; the note parser caps notes at 16 KiB.
MAX_BODY = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"
TEXT = "text/plain; charset=utf-8"
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}")


class WitnessRefusal(MeterchainError):
    """The witness does not cosign: ``status`` and ``body`` are the HTTP answer the spec gives."""

    check = "witness"

    def __init__(self, status: int, message: str, *, body: str | None = None,
                 content_type: str = TEXT, **context: object) -> None:
        super().__init__(message, check=WitnessRefusal.check, status=status, **context)
        self.status = status
        self.body = (message + "\n") if body is None else body
        self.content_type = content_type


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """A parsed add-checkpoint request body."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


@dataclass(frozen=True, slots=True)
class Signed:
    """A checkpoint whose origin is known and whose log signature verified."""

    checkpoint: Checkpoint
    text: str  # the note text, extension lines included: what a cosignature signs
    log_signatures: tuple[str, ...]  # the verified log signature lines, each ending in a newline


@dataclass(frozen=True, slots=True)
class Latest:
    """The latest checkpoint this witness cosigned for an origin."""

    size: int
    root: bytes


def _bad(message: str) -> WitnessRefusal:
    return WitnessRefusal(400, message)


def parse_request(body: bytes) -> AddCheckpoint:
    """Parse ``old <size>``, up to 63 base64 hashes, an empty line and a checkpoint (400 if not)."""
    if len(body) > MAX_BODY:
        raise _bad(f"request body is larger than {MAX_BODY} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise _bad("request body has no empty line before the checkpoint")
    lines = head.split("\n")
    old_line, proof_lines = lines[0], lines[1:]
    if not old_line.startswith("old "):
        raise _bad("the first line must be 'old <size>'")
    if not _SIZE_RE.fullmatch(old_line[4:]):
        raise _bad("old size must be a decimal without leading zeros")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise _bad(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in proof_lines:
        try:
            value = strict_b64decode(line)
        except ValueError as exc:
            raise _bad(f"consistency proof line is {exc}") from None
        if len(value) != HASH_SIZE:
            raise _bad("consistency proof line is not a 32-byte hash")
        proof.append(value)
    return AddCheckpoint(int(old_line[4:]), tuple(proof), note)


def _parse_checkpoint(text: str) -> Checkpoint:
    # Origin, size and root; extension lines (non-empty, which the note parser ensured) follow.
    first_three = "".join(text.splitlines(keepends=True)[:3])
    return Checkpoint.parse_body(first_three)


def open_signed(request: AddCheckpoint, logs: Mapping[str, Sequence[NoteVerifier]]) -> Signed:
    """The checkpoint's origin must be a configured log (404) and one of its keys must have
    signed it, with no trusted key's signature failing (403)."""
    try:
        text, signatures = split_note(request.note)
        checkpoint = _parse_checkpoint(text)
    except MeterchainError as exc:
        raise _bad(f"not a checkpoint: {exc}") from None
    keys = logs.get(checkpoint.origin)
    if not keys:
        raise WitnessRefusal(404, f"unknown log origin {checkpoint.origin!r}", origin=checkpoint.origin)
    verified = _verified_lines(text, signatures, keys, request.note)
    if not verified:
        raise WitnessRefusal(403, f"no signature by a trusted key of {checkpoint.origin}",
                             origin=checkpoint.origin)
    return Signed(checkpoint, text, tuple(verified))


def _verified_lines(text: str, signatures: Sequence[Signature], keys: Sequence[NoteVerifier],
                    note: str) -> list[str]:
    by_id = {(key.name, key.key_hash): key for key in keys}
    lines = note[note.rfind("\n\n") + 2:].splitlines(keepends=True)
    verified = []
    for sig, line in zip(signatures, lines, strict=True):
        key = by_id.get((sig.name, sig.key_hash))
        if key is None:
            continue  # tlog-witness: "it MUST ignore signatures from unknown keys"
        if not key.verify(text.encode(), sig.signature):
            raise WitnessRefusal(403, f"the signature by trusted key {key.name} does not verify",
                                 origin=key.name)
        verified.append(line)
    return verified


def check_transition(request: AddCheckpoint, signed: Signed, latest: Latest | None) -> None:
    """The consistency rules of add-checkpoint against the latest cosigned checkpoint."""
    checkpoint = signed.checkpoint
    if request.old_size > checkpoint.size:
        raise _bad(f"old size {request.old_size} is larger than the checkpoint's size {checkpoint.size}")
    latest_size = latest.size if latest else 0
    if request.old_size != latest_size:
        raise WitnessRefusal(409, f"old size {request.old_size} is not the latest cosigned size {latest_size}",
                             body=f"{latest_size}\n", content_type=SIZE_CONTENT_TYPE, latest=latest_size)
    if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
        raise WitnessRefusal(422, "a checkpoint of size 0 must have the empty tree's root")
    if request.old_size == 0:
        if request.proof:
            raise WitnessRefusal(422, "old size 0 takes no consistency proof")
        return
    assert latest is not None  # old_size == latest.size > 0
    if request.old_size == checkpoint.size and checkpoint.root != latest.root:
        raise WitnessRefusal(422, f"size {checkpoint.size} was cosigned with another root hash",
                             size=checkpoint.size)
    try:
        verify_consistency(latest.size, checkpoint.size, latest.root, checkpoint.root, request.proof)
    except MeterchainError as exc:
        raise WitnessRefusal(422, f"consistency proof from {latest.size} to {checkpoint.size} does not "
                             f"verify: {exc}", size=checkpoint.size) from None
