"""The backend's HTTP API (FastAPI; OpenAPI at /docs), assembled from each concept's routes.

Every integer is bounded to [0, 2^53 − 1]; every error body says what was wrong and what to do
(``errors.py``). Who is calling is resolved once (``backend/access/auth.py``: the admin token or a
scoped API key); every route that returns reading data is scoped in
``backend/access/readings_routes.py``.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from meterchain.backend.access.auth import build_auth
from meterchain.backend.access.readings_routes import readings_router
from meterchain.backend.access.routes import access_router
from meterchain.backend.api.docs import install_docs
from meterchain.backend.api.errors import ApiError, install_error_handlers, not_visible
from meterchain.backend.api.state import ApiState
from meterchain.backend.console.routes import install_console
from meterchain.backend.devices.routes import devices_router
from meterchain.backend.log.routes import log_api_router, log_router
from meterchain.backend.provisioning.routes import provisioning_router
from meterchain.backend.provisioning.tokens import ProvisioningSettings
from meterchain.backend.settlement.household_routes import household_router
from meterchain.backend.settlement.routes import settlement_router
from meterchain.backend.store import SqliteStore, open_sqlite
from meterchain.backend.utility.routes import install_utilities
from meterchain.backend.web.app import mount_web
from meterchain.backend.web.stored_settlements import StoredSettlements
from meterchain.contract.note import NoteVerifier
from meterchain.contract.tlog_policy import parse_policy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["ApiError", "ApiState", "create_app", "not_visible"]


def create_app(db: str, admin_token: str, log_verifier: NoteVerifier,
               provisioning: ProvisioningSettings | None = None) -> FastAPI:
    """The API over the database at ``db``; ``admin_token`` is the root principal's token."""
    state = ApiState(db, admin_token, log_verifier)
    if provisioning is not None and provisioning.witness_policy:
        state.witness_policy = parse_policy(provisioning.witness_policy)

    health: list[SqliteStore] = []  # /healthz's own connection (opened with the others)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.reader, state.writer = await open_sqlite(db), await open_sqlite(db)
        health.append(await open_sqlite(db))
        try:
            yield
        finally:
            await state.reader.close()
            await state.writer.close()
            await health.pop().close()

    app = FastAPI(
        title="meterchain backend",
        version="1",
        description="Verifiable smart-meter readings: ingest, transparency log, proofs.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves Swagger UI from local assets, not a CDN
        redoc_url=None,
    )
    app.state.api = state

    # Probes first: a route is found by trying each in turn, and these two were behind every
    # router (≈ 40 % of a trivial request's CPU went to matching, issue 20's profile).
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, object]:
        """Alive and the database readable. Its own connection: a probe must not wait in the
        reader's queue behind proof and reading queries (a busy API is not a dead one)."""
        checkpoint = await health[0].latest_checkpoint()
        return {"ok": True, "tree_size": checkpoint.size if checkpoint else 0}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    install_docs(app)

    auth = build_auth(state)  # bearer token -> Principal: the admin token or a scoped API key
    require_admin = auth.require_admin
    app.include_router(readings_router(state, auth))
    app.include_router(access_router(state, auth))
    app.include_router(log_router(state.read))
    app.include_router(log_api_router(state))
    app.include_router(devices_router(state, require_admin))
    app.include_router(settlement_router(state, auth))  # netting: terms, intervals, lines, bills
    app.include_router(household_router(state, auth))  # wallet, market, conditions, ratings
    install_utilities(app, state, auth)  # batches, OCMF, fleet, webhooks; request limits
    app.include_router(provisioning_router(state, require_admin, provisioning or ProvisioningSettings()))
    # the household dashboard: pages, sign-in, live telemetry, and the stored settlements
    mount_web(app, state, StoredSettlements(state.read))
    install_console(app, state, (provisioning or ProvisioningSettings()).public_url)  # /console: operators, TOTP

    install_error_handlers(app)
    return app
