"""The backend's HTTP API (FastAPI; OpenAPI at /docs): readings, proofs, checkpoints, batches,
device enrolment. Every integer is bounded to [0, 2^53 − 1]; every error body says what was wrong
and what to do. Who is calling is resolved once (``backend/auth.py``: the admin token or a scoped
API key); every route that returns reading data lives in ``api_readings.py`` and is scoped there.
"""


import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from meterchain.backend import registry
from meterchain.backend.api_log import log_router
from meterchain.backend.api_provisioning import provisioning_router
from meterchain.backend.provisioning import ProvisioningSettings
from meterchain.backend.log.proofs import consistency_proof
from meterchain.backend.store import SqliteStore, open_store
from meterchain.contract.batch import SignedBatchHeader
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteVerifier
from meterchain.contract.reading import MAX_SAFE_INT

DEVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Device = Annotated[str, Path(pattern=DEVICE_PATTERN, description="Device id")]
SafeInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
Seq = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]


class ApiError(Exception):
    """An error answered as ``{"error": check, "detail": what, "hint": what to do}``."""

    def __init__(self, status: int, error: str, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.hint = status, error, detail, hint


def not_visible(what: str, hint: str = "check the id; GET /api/v1/metering-points lists what "
                "this key may see") -> ApiError:
    """The 404 for what does not exist and for what this key may not see alike: a caller out of
    scope must not learn that it exists (docs/privacy.md)."""
    return ApiError(404, "not-found", f"no {what} visible to this key", hint)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EnrolRequest(_Strict):
    device: str = Field(pattern=DEVICE_PATTERN)
    public_key: str = Field(
        min_length=1, max_length=4096,
        description="P-256 SubjectPublicKeyInfo: PEM text or base64 of the DER",
    )


class RotateRequest(_Strict):
    public_key: str = Field(min_length=1, max_length=4096)
    valid_from: SafeInt | None = Field(default=None, description="First sequence of the new key")


class RevokeRequest(_Strict):
    valid_from: SafeInt | None = Field(default=None, description="First sequence refused")


class DeviceLeafOut(BaseModel):
    device: str
    event: str
    key_id: str
    valid_from: int
    time: int


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


class ApiState:
    """Connections the API owns: one for reads, one (behind a lock) for enrolment writes."""

    def __init__(self, db: str, admin_token: str, verifier: NoteVerifier) -> None:
        self.db, self.admin_token, self.verifier = db, admin_token, verifier
        self.reader: SqliteStore | None = None
        self.writer: SqliteStore | None = None
        self.write_lock = asyncio.Lock()


def create_app(db: str, admin_token: str, log_verifier: NoteVerifier,
               provisioning: ProvisioningSettings | None = None) -> FastAPI:
    """The API over the database at ``db``; ``admin_token`` is the root principal's token."""
    state = ApiState(db, admin_token, log_verifier)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.reader, state.writer = await open_store(db), await open_store(db)
        try:
            yield
        finally:
            await state.reader.close()
            await state.writer.close()

    app = FastAPI(
        title="meterchain backend",
        version="1",
        description="Verifiable smart-meter readings: ingest, transparency log, proofs.",
        lifespan=lifespan,
    )
    app.state.api = state
    from meterchain.backend.api_access import access_router
    from meterchain.backend.api_readings import readings_router
    from meterchain.backend.api_settlement import settlement_router
    from meterchain.backend.auth import build_auth

    auth = build_auth(state)  # bearer token -> Principal: the admin token or a scoped API key
    require_admin = auth.require_admin
    app.include_router(readings_router(state, auth))
    app.include_router(access_router(state, auth))
    app.include_router(log_router(state))
    app.include_router(settlement_router(state, auth))  # netting: terms, intervals, lines, bills
    from meterchain.backend.api_utility import install_utilities
    install_utilities(app, state, auth)  # batches, OCMF, fleet, webhooks; request limits
    app.include_router(provisioning_router(state, require_admin, provisioning or ProvisioningSettings()))
    from meterchain.backend.web.app import mount_web
    from meterchain.backend.web.stored_settlements import StoredSettlements
    # the household dashboard: pages, sign-in, live telemetry, and the stored settlements
    mount_web(app, state, StoredSettlements(lambda: state.reader))

    def reader() -> SqliteStore:
        assert state.reader is not None
        return state.reader

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail, "hint": exc.hint},
                            status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "invalid-request", "detail": "; ".join(problems)[:1000],
             "hint": "see the OpenAPI description at /docs"},
            status_code=422,
        )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:
        checkpoint = await reader().latest_checkpoint()
        return {"ok": True, "tree_size": checkpoint.size if checkpoint else 0}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/log/public-key", tags=["log"], response_class=PlainTextResponse)
    async def public_key() -> str:
        """The log's verifier key (name+hash+base64): what `meterchain verify --log-key` takes."""
        return str(state.verifier) + "\n"

    @app.get("/api/v1/checkpoint", tags=["log"], response_class=PlainTextResponse)
    async def checkpoint() -> str:
        """The newest signed checkpoint (C2SP tlog-checkpoint as a signed note)."""
        row = await reader().latest_checkpoint()
        if row is None:
            raise ApiError(404, "no-checkpoint", "nothing has been sealed yet",
                           "wait for the first seal (every few seconds once readings arrive)")
        return row.note

    @app.get("/api/v1/proofs/consistency", tags=["log"], response_model=ConsistencyOut)
    async def consistency(
        old: Annotated[int, Query(ge=1, le=MAX_SAFE_INT)],
        new: Annotated[int, Query(ge=1, le=MAX_SAFE_INT)],
    ) -> ConsistencyOut:
        """RFC 9162 consistency proof between two tree sizes (base64 hashes)."""
        latest = await reader().latest_checkpoint()
        size = latest.size if latest else 0
        if not old <= new <= size:
            raise ApiError(400, "bad-sizes", f"need 1 <= old <= new <= {size} (the newest checkpoint)",
                           "ask for sizes of checkpoints you hold")
        proof = await consistency_proof(reader(), old, new)
        return ConsistencyOut(old=old, new=new, proof=[base64.b64encode(h).decode() for h in proof])

    @app.get("/api/v1/batches", tags=["log"], response_model=BatchesOut)
    async def batches(
        start: Annotated[int, Query(ge=0, le=MAX_SAFE_INT)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> BatchesOut:
        """Signed batch headers from index ``start`` on: the hash chain of seals."""
        rows = await reader().batches(start, limit)
        out = []
        for row in rows:
            header = SignedBatchHeader.from_cbor(row.header).header
            out.append(BatchOut(index=header.index, first=header.first, size=header.size,
                                root=base64.b64encode(header.root).decode(), sealed=header.sealed,
                                header=base64.b64encode(row.header).decode()))
        return BatchesOut(batches=out)

    async def _write(action) -> DeviceLeafOut:  # type: ignore[no-untyped-def]
        assert state.writer is not None
        try:
            async with state.write_lock:
                leaf = await action(state.writer)
        except MeterchainError as exc:
            status = 409 if exc.check == "registry" else 400
            raise ApiError(status, exc.check, str(exc),
                           "fix the request; GET the device's state from the CLI if unsure") from None
        return DeviceLeafOut(device=leaf.device, event=leaf.event.value, key_id=leaf.key_id.hex(),
                             valid_from=leaf.valid_from, time=leaf.time)

    @app.post("/api/v1/devices", tags=["devices"], status_code=201, response_model=DeviceLeafOut,
              dependencies=[Depends(require_admin)])
    async def enrol_device(body: EnrolRequest) -> DeviceLeafOut:
        """Enrol a device: its key becomes valid from sequence 1 (a device leaf in the log)."""
        return await _write(lambda s: registry.enrol(s, body.device, body.public_key.encode(),
                                                     int(time.time())))

    @app.post("/api/v1/devices/{device}/rotate", tags=["devices"], response_model=DeviceLeafOut,
              dependencies=[Depends(require_admin)])
    async def rotate_device(device: Device, body: RotateRequest) -> DeviceLeafOut:
        """Rotate a device's key from ``valid_from`` (default: after its last committed reading)."""
        return await _write(lambda s: registry.rotate(s, device, body.public_key.encode(),
                                                      int(time.time()), body.valid_from))

    @app.post("/api/v1/devices/{device}/revoke", tags=["devices"], response_model=DeviceLeafOut,
              dependencies=[Depends(require_admin)])
    async def revoke_device(device: Device, body: RevokeRequest) -> DeviceLeafOut:
        """Revoke a device's key from ``valid_from`` (default: after its last committed reading)."""
        return await _write(lambda s: registry.revoke(s, device, int(time.time()), body.valid_from))

    return app
