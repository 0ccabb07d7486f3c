"""The log's public read API: the C2SP tlog-tiles layout (public, cacheable) and the JSON routes
under /api/v1 (log key, checkpoint, consistency proofs, batch headers).

``GET /checkpoint`` (the newest signed checkpoint, text), ``GET /tile/<L>/<N>[.p/<W>]`` (hash
tiles, immutable: a partial tile's path names its width) and ``GET /batch/<index>`` (one signed
batch header, CBOR, immutable). Hashes and signed headers only, never entries: readings are
private (docs/privacy.md), so there is no ``tile/entries``. Mirrors and monitors copy the whole
log with plain GETs and check it against the signed root (docs/log.md).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse, Response
from meterchain.backend.api.errors import ApiError
from meterchain.backend.api.state import ApiState
from meterchain.backend.log.nodes import reader_for
from meterchain.backend.log.proofs import consistency_proof
from meterchain.backend.log.tiles import TileError, check_exists, parse_tile_path
from meterchain.backend.store import LogStore
from meterchain.contract.batch import SignedBatchHeader
from meterchain.contract.reading import MAX_SAFE_INT
from pydantic import BaseModel, Field

IMMUTABLE = "public, max-age=31536000, immutable"


class ConsistencyOut(BaseModel):
    old: int
    new: int
    proof: list[str]


class BatchOut(BaseModel):
    index: int
    first: int
    size: int
    root: str
    sealed: int
    header: str = Field(description="Signed header, base64 CBOR [header, Ed25519 signature]")


class BatchesOut(BaseModel):
    batches: list[BatchOut]


def log_router(store: Callable[[], LogStore]) -> APIRouter:
    """Public tlog-tiles routes over ``store()``, the reader connection (of the API's state, or
    of the PostgreSQL api role's own app)."""
    router = APIRouter(tags=["log (tlog-tiles)"])

    async def tree_size() -> int:
        row = await store().latest_checkpoint()
        return row.size if row else 0

    @router.get("/checkpoint", response_class=Response,
                responses={200: {"content": {"text/plain": {}}}})
    async def checkpoint() -> Response:
        """The newest signed checkpoint (c2sp.org/tlog-checkpoint); changes with every seal."""
        row = await store().latest_checkpoint()
        if row is None:
            raise ApiError(404, "no-checkpoint", "nothing has been sealed yet",
                           "wait for the first seal (every few seconds once readings arrive)")
        return Response(row.note, media_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @router.get("/tile/{path:path}", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    async def tile(path: str) -> Response:
        """A hash tile (c2sp.org/tlog-tiles): 32-byte node hashes, concatenated."""
        try:
            ref = parse_tile_path("tile/" + path)
        except TileError as exc:
            raise ApiError(404, "no-such-tile", str(exc),
                           "tile paths are tile/<L>/<N>[.p/<W>] (c2sp.org/tlog-tiles)") from None
        size = await tree_size()
        try:
            check_exists(ref, size)
        except TileError as exc:
            raise ApiError(404, "tile-not-yet", str(exc),
                           "fetch /checkpoint and ask only for tiles of its tree size") from None
        data = await reader_for(store()).tile(ref.tree_level, ref.index, ref.width)
        return Response(data, media_type="application/octet-stream",
                        headers={"Cache-Control": IMMUTABLE})

    @router.get("/batch/{index}", response_class=Response,
                responses={200: {"content": {"application/cbor": {}}}})
    async def batch(index: Annotated[int, Path(ge=0, le=MAX_SAFE_INT)]) -> Response:
        """One signed batch header (CBOR [header, Ed25519 signature]); the chain of seals."""
        rows = await store().batches(index, 1)
        if not rows or rows[0].idx != index:
            raise ApiError(404, "no-such-batch", f"batch {index} has not been sealed",
                           "GET /api/v1/batches lists the sealed ones")
        return Response(rows[0].header, media_type="application/cbor",
                        headers={"Cache-Control": IMMUTABLE})

    @router.get("/api/v1/proofs/consistency", response_model=ConsistencyOut, tags=["log"])
    async def consistency(
        old: Annotated[int, Query(ge=1, le=MAX_SAFE_INT)],
        new: Annotated[int, Query(ge=1, le=MAX_SAFE_INT)],
    ) -> ConsistencyOut:
        """RFC 9162 consistency proof between two tree sizes (base64 hashes): what gateways
        holding receipts and monitors ask (here, so the PostgreSQL api role serves it too)."""
        size = await tree_size()
        if not old <= new <= size:
            raise ApiError(400, "bad-sizes", f"need 1 <= old <= new <= {size} (the newest checkpoint)",
                           "ask for sizes of checkpoints you hold")
        proof = await consistency_proof(store(), old, new)
        return ConsistencyOut(old=old, new=new, proof=[base64.b64encode(h).decode() for h in proof])

    return router


def log_api_router(state: ApiState) -> APIRouter:
    """The log's JSON and text routes under /api/v1: key, newest checkpoint, proofs, batches."""
    router = APIRouter(tags=["log"])

    @router.get("/api/v1/log/public-key", response_class=PlainTextResponse)
    async def public_key() -> str:
        """The log's verifier key (name+hash+base64): what `meterchain verify --log-key` takes."""
        return str(state.verifier) + "\n"

    @router.get("/api/v1/log/witness-policy", response_class=PlainTextResponse)
    async def witness_policy() -> str:
        """The witness policy (C2SP tlog-policy) this backend's checkpoints are cosigned under and
        its proof pages require: what `meterchain verify --policy` takes (docs/witness.md)."""
        if state.witness_policy is None:
            raise ApiError(404, "no-witness-policy", "this log has no witness policy",
                           "verify with --log-key alone")
        return state.witness_policy.to_text()

    @router.get("/api/v1/checkpoint", response_class=PlainTextResponse)
    async def checkpoint() -> str:
        """The newest signed checkpoint (C2SP tlog-checkpoint as a signed note)."""
        row = await state.read().latest_checkpoint()
        if row is None:
            raise ApiError(404, "no-checkpoint", "nothing has been sealed yet",
                           "wait for the first seal (every few seconds once readings arrive)")
        return row.note

    @router.get("/api/v1/batches", response_model=BatchesOut)
    async def batches(
        start: Annotated[int, Query(ge=0, le=MAX_SAFE_INT)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> BatchesOut:
        """Signed batch headers from index ``start`` on: the hash chain of seals."""
        rows = await state.read().batches(start, limit)
        out = []
        for row in rows:
            header = SignedBatchHeader.from_cbor(row.header).header
            out.append(BatchOut(index=header.index, first=header.first, size=header.size,
                                root=base64.b64encode(header.root).decode(), sealed=header.sealed,
                                header=base64.b64encode(row.header).decode()))
        return BatchesOut(batches=out)


    return router
