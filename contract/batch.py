"""Batch headers: the hash chain on which the Merkle batches are anchored.

Each sealed batch has a header (index, hash of the previous header, first leaf index, tree size
and root after the batch, time sealed) signed with the log's Ed25519 key. The signature covers
the header's CBOR bytes, which start with 0xA7 and so can never be a valid note text (UTF-8).
An auditor walks the chain from the first header to the latest with :func:`verify_chain`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError, MeterchainError
from meterchain.contract.note import NoteSigner, NoteVerifier
from meterchain.contract.reading import MAX_SAFE_INT

BATCH_TYPE = "meterchain/batch/v1"
GENESIS_PREV = bytes(32)
MAX_HEADER_SIZE = 512


class ChainError(MeterchainError):
    """The batch chain is broken at a header."""

    check = "batch-chain"


@dataclass(frozen=True, slots=True)
class BatchHeader:
    index: int
    prev: bytes
    first: int
    size: int
    root: bytes
    sealed: int

    def __post_init__(self) -> None:
        for name in ("index", "first", "size", "sealed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
                raise FieldError(f"batch header: {name} must be an integer in [0, 2^53-1]", field=name)
        for name in ("prev", "root"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise FieldError(f"batch header: {name} must be 32 bytes", field=name)
        if self.size <= self.first:
            raise FieldError("batch header: a batch holds at least one leaf", field="size")

    def to_cbor(self) -> bytes:
        return cbor.encode(
            {
                "t": BATCH_TYPE,
                "index": self.index,
                "prev": self.prev,
                "first": self.first,
                "size": self.size,
                "root": self.root,
                "sealed": self.sealed,
            }
        )

    def hash(self) -> bytes:
        """What the next header's ``prev`` must be."""
        return hashlib.sha256(self.to_cbor()).digest()

    @classmethod
    def from_cbor(cls, data: bytes) -> BatchHeader:
        obj = cbor.decode(data, what="batch header", max_size=MAX_HEADER_SIZE)
        keys = {"t", "index", "prev", "first", "size", "root", "sealed"}
        if not isinstance(obj, dict) or set(obj) != keys or obj["t"] != BATCH_TYPE:
            raise EncodingError(f"batch header: must be a {BATCH_TYPE} map", what="batch header")
        return cls(**{k: obj[k] for k in keys - {"t"}})


@dataclass(frozen=True, slots=True)
class SignedBatchHeader:
    header: BatchHeader
    signature: bytes

    def to_cbor(self) -> bytes:
        return cbor.encode([self.header.to_cbor(), self.signature])

    @classmethod
    def from_cbor(cls, data: bytes) -> SignedBatchHeader:
        obj = cbor.decode(data, what="signed batch header", max_size=MAX_HEADER_SIZE + 80)
        if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, bytes) for x in obj)):
            raise EncodingError("signed batch header: must be [header bytes, signature]")
        return cls(BatchHeader.from_cbor(obj[0]), obj[1])

    @classmethod
    def sign(cls, header: BatchHeader, signer: NoteSigner) -> SignedBatchHeader:
        return cls(header, signer.sign_raw(header.to_cbor()))

    def verify(self, verifier: NoteVerifier) -> None:
        if len(self.signature) != 64 or not verifier.verify(self.header.to_cbor(), self.signature):
            raise ChainError(
                f"batch {self.header.index}: header signature does not verify with the log key",
                batch=self.header.index,
            )


def next_header(previous: BatchHeader | None, size: int, root: bytes, sealed: int) -> BatchHeader:
    """The header that follows ``previous`` for a batch ending at tree size ``size``."""
    if previous is None:
        return BatchHeader(index=0, prev=GENESIS_PREV, first=0, size=size, root=root, sealed=sealed)
    return BatchHeader(
        index=previous.index + 1,
        prev=previous.hash(),
        first=previous.size,
        size=size,
        root=root,
        sealed=sealed,
    )


def verify_chain(headers: Iterable[SignedBatchHeader], verifier: NoteVerifier) -> BatchHeader | None:
    """Walk the chain from the first header; return the last, or raise naming the first bad one."""
    previous: BatchHeader | None = None
    for signed in headers:
        signed.verify(verifier)
        h = signed.header
        expected_index = 0 if previous is None else previous.index + 1
        expected_prev = GENESIS_PREV if previous is None else previous.hash()
        expected_first = 0 if previous is None else previous.size
        if h.index != expected_index:
            raise ChainError(f"batch {h.index}: expected index {expected_index}", batch=h.index)
        if h.prev != expected_prev:
            raise ChainError(f"batch {h.index}: prev is not the hash of batch {h.index - 1}", batch=h.index)
        if h.first != expected_first:
            raise ChainError(
                f"batch {h.index}: first leaf {h.first}, expected {expected_first}", batch=h.index
            )
        if previous is not None and h.sealed < previous.sealed:
            raise ChainError(f"batch {h.index}: sealed before batch {h.index - 1}", batch=h.index)
        previous = h
    return previous
