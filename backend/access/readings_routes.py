"""Every HTTP route that returns reading data, each scoped to the caller's metering points.

The admin sees everything (also readings of meters not bound to any metering point). Any other
principal sees a reading only if a meter binding ties it to a metering point at its ``end`` and
the principal's window on that point covers ``end`` (``PartyTables.readings``). An id outside the
caller's scope is answered exactly like an unknown one (404), so a key never learns that another
household's metering point or reading exists.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local Annotated aliases.

import base64
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import PlainTextResponse, Response
from meterchain.backend.access.assignments import AssignmentTables, covering
from meterchain.backend.access.auth import Auth
from meterchain.backend.access.model import DEVICE_PATTERN, ID_PATTERN, Principal
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.errors import ApiError, not_visible
from meterchain.backend.api.state import ApiState
from meterchain.backend.erasure.rules import erased_detail
from meterchain.backend.erasure.tables import ErasureTables
from meterchain.backend.log.proofs import ProofUnavailable, build_bundle
from meterchain.backend.store import ReadingRow
from meterchain.contract.reading import MAX_SAFE_INT
from pydantic import BaseModel, Field

Device = Annotated[str, Path(pattern=DEVICE_PATTERN, description="Device id")]
Point = Annotated[str, Path(pattern=ID_PATTERN, description="Metering point id")]
Seq = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]
Start = Annotated[int, Query(ge=0, le=MAX_SAFE_INT, description="Interval end >= start")]
End = Annotated[int, Query(ge=0, le=MAX_SAFE_INT, description="Interval end < end")]
Limit = Annotated[int, Query(ge=1, le=10_000)]


class ReadingOut(BaseModel):
    seq: int
    meter: str
    start: int
    end: int
    import_wh: int
    export_wh: int
    leaf_index: int | None
    message: str = Field(description="The signed message, base64 (CBOR [reading, signature])")


class PointReadingOut(ReadingOut):
    device: str = Field(description="The gateway that signed it (a meter exchange may change it)")


class PointOut(BaseModel):
    id: str
    kind: str
    utility: str
    community: str | None


def _fields(row: ReadingRow) -> dict[str, object]:
    """A reading as ``ReadingOut`` has it (the same names, in its order)."""
    return {"seq": row.seq, "meter": row.meter, "start": row.start, "end": row.end,
            "import_wh": row.import_wh, "export_wh": row.export_wh, "leaf_index": row.leaf_index,
            "message": base64.b64encode(row.message).decode()}


def _json(items: list[dict[str, object]]) -> Response:
    """A list of readings as JSON in one ``json.dumps``: building and re-checking 96 pydantic
    models per day of a point was ≈ 1/3 of its CPU (issue 20). The fields come typed from the
    store and FastAPI does not check a Response again; ``response_model`` still documents them
    (tests/backend/access compare the two)."""
    return Response(json.dumps(items, separators=(",", ":")), media_type="application/json")


def readings_router(state: "ApiState", auth: Auth) -> APIRouter:
    """Reading data: by device, by metering point, and proof bundles; all behind ``auth``."""

    router = APIRouter(prefix="/api/v1", tags=["readings"])
    Reader = Annotated[Principal, Depends(auth.require_reader)]

    store = state.read  # the reader connection (the visibility queries are SQLite-only tables)

    async def gone_or_not_found(who: Principal, device: str, seq: int, what: str,
                                point: str | None = None) -> ApiError:
        """410 for a reading the caller could see before its household erased it, else 404."""
        erased = await ErasureTables(store()).erased_reading(who, device, seq)
        if erased is None or (point is not None and erased.metering_point != point):
            return not_visible(what)
        return ApiError(410, "erased", erased_detail(erased),
                        "the household's data was erased; a bundle it downloaded before still "
                        "verifies offline (meterchain verify)")

    async def bundle_of(device: str, seq: int, point: str | None = None) -> str:
        try:
            if point is None:
                return await build_bundle(store(), device, seq)
            row = await store().reading(device, seq)
            opened = [] if row is None else covering(
                await AssignmentTables(store()).meter_openings([point], MAX_SAFE_INT),
                [(point, device, row.meter, row.end)])
            return await build_bundle(store(), device, seq, point,
                                      [(o.leaf_index, o.opening) for o in opened if o.leaf_index is not None])
        except ProofUnavailable as exc:
            if exc.check == "not-sealed":
                raise ApiError(409, "not-sealed", str(exc), "retry after the next seal") from None
            raise ApiError(404, "not-found", str(exc), "check the device id and sequence") from None

    @router.get("/devices/{device}/readings", response_model=list[ReadingOut])
    async def device_readings(who: Reader, device: Device, start: Start = 0,
                              end: End = MAX_SAFE_INT, limit: Limit = 1000) -> Response:
        """A device's readings whose interval ends in [start, end), oldest first; for a scoped
        key only those of its metering points in its periods."""
        if who.is_admin:
            return _json([_fields(r) for r in await store().readings(device, start, end, limit)])
        tables = PartyTables(store())
        if not await tables.device_visible(who, device):
            raise not_visible(f"device {device}")
        rows = await tables.readings(who, device=device, start=start, end=end, limit=limit)
        return _json([_fields(row) for row, _ in rows])

    @router.get("/devices/{device}/readings/{seq}/bundle", response_class=PlainTextResponse)
    async def device_bundle(who: Reader, device: Device, seq: Seq) -> str:
        """The reading's proof bundle (c2sp.org/tlog-proof text); check it with `meterchain verify`."""
        if not who.is_admin and await PartyTables(store()).reading_point(who, device, seq) is None:
            raise await gone_or_not_found(who, device, seq, f"reading {device}#{seq}")
        if who.is_admin and await store().reading(device, seq) is None:
            raise await gone_or_not_found(who, device, seq, f"reading {device}#{seq}")
        return await bundle_of(device, seq)

    @router.get("/metering-points", response_model=list[PointOut])
    async def metering_points(who: Reader) -> list[PointOut]:
        """The metering points this key may see (at some time)."""
        return [PointOut(id=p.id, kind=p.kind.value, utility=p.utility, community=p.community)
                for p in await PartyTables(store()).visible_points(who)]

    @router.get("/metering-points/{point}/readings", response_model=list[PointReadingOut])
    async def point_readings(who: Reader, point: Point, start: Start = 0,
                             end: End = MAX_SAFE_INT, limit: Limit = 1000) -> Response:
        """Readings of a metering point (whichever meter measured it then) whose interval ends in
        [start, end), oldest first; for a household only within its occupancy."""
        tables = PartyTables(store())
        if not await tables.point_visible(who, point):
            raise not_visible(f"metering point {point}")
        rows = await tables.readings(who, point=point, start=start, end=end, limit=limit)
        return _json([{**_fields(row), "device": row.device} for row, _ in rows])

    @router.get("/metering-points/{point}/readings/{device}/{seq}/bundle",
                response_class=PlainTextResponse)
    async def point_bundle(who: Reader, point: Point, device: Device, seq: Seq) -> str:
        """The proof bundle of a reading of this metering point."""
        if await PartyTables(store()).reading_point(who, device, seq) != point:
            raise await gone_or_not_found(who, device, seq,
                                          f"reading {device}#{seq} of metering point {point}", point)
        return await bundle_of(device, seq, point)  # version 2: it proves the point too

    return router
