"""The log's static read API in the C2SP tlog-tiles layout, public and cacheable.

``GET /checkpoint`` (the newest signed checkpoint, text), ``GET /tile/<L>/<N>[.p/<W>]`` (hash
tiles, immutable: a partial tile's path names its width) and ``GET /batch/<index>`` (one signed
batch header, CBOR, immutable). Hashes and signed headers only, never entries: readings are
private (docs/privacy.md), so there is no ``tile/entries``. Mirrors and monitors copy the whole
log with plain GETs and check it against the signed root (docs/log.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response
from meterchain.backend.log.nodes import reader_for
from meterchain.backend.log.tiles import TileError, check_exists, parse_tile_path
from meterchain.contract.reading import MAX_SAFE_INT

if TYPE_CHECKING:
    from meterchain.backend.api import ApiState

IMMUTABLE = "public, max-age=31536000, immutable"


def log_router(state: ApiState) -> APIRouter:
    """Public tlog-tiles routes over the API's reader connection."""
    from meterchain.backend.api import ApiError

    router = APIRouter(tags=["log (tlog-tiles)"])

    def store():  # type: ignore[no-untyped-def]
        assert state.reader is not None
        return state.reader

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

    return router
