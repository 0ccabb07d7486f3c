"""``meterchain backend serve``: ingest, sealer and the HTTP API in one asyncio process.

Each part has its own database connection; a signal (SIGINT/SIGTERM) stops the API and the
ingest, seals what is pending, and closes the store cleanly. ``roles`` picks the parts (docs/
backend.md, "Scale-out"): N processes with ``ingest`` in one MQTT 5 share group beside exactly one
with ``sealer`` (guarded by :class:`SealerLock`) and one or more with ``api``. A process without
``api`` still serves ``/metrics`` and ``/healthz`` on its HTTP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from meterchain.backend.access.assignments import AssignmentTables
from meterchain.backend.api.app import create_app
from meterchain.backend.api.errors import ApiError
from meterchain.backend.config import BackendConfig, broker_address
from meterchain.backend.ingest.control_key import load_or_create_control_key
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.cosigning import cosigning_from
from meterchain.backend.log.receipts import ReceiptSender, on_sealed
from meterchain.backend.log.routes import log_router
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.provisioning.tokens import settings_from_config
from meterchain.backend.settlement.runner import SettlementRunner
from meterchain.backend.store import (
    LogStore,
    SqliteStore,
    Store,
    is_postgres,
    open_postgres,
    open_sqlite,
    open_store,
)
from meterchain.backend.utility.webhooks import WebhookWorker
from meterchain.backend.web.live import keep_enrolled, subscribe
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteSigner
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


class ServiceError(MeterchainError):
    check = "config"


def load_or_create_log_key(path: str | Path, origin: str, *, create: bool = True) -> NoteSigner:
    """The log's Ed25519 note key; created (mode 0600) on first run. Its name is the origin.
    Only the sealer may create it (``create``): an API alone must serve the sealer's key."""
    path = Path(path)
    if path.exists():
        try:
            signer = NoteSigner.parse(path.read_text())
        except (OSError, MeterchainError) as exc:
            raise ServiceError(f"cannot read log key {path}: {exc}", path=str(path)) from None
        if signer.name != origin:
            raise ServiceError(
                f"log key {path} is named {signer.name!r}, but the origin is {origin!r}; "
                "the key name IS the origin: pass --origin {signer.name} or use another key",
                path=str(path),
            )
        return signer
    if not create:
        raise ServiceError(
            f"log key {path} does not exist; a process without the sealer role serves the "
            "sealer's key: point log_key at the sealer's key file (the sealer creates it)",
            path=str(path),
        )
    signer = NoteSigner.generate(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(signer) + "\n")
    log.info("created log key %s (public: %s)", path, signer.verifier)
    return signer


class SealerLock:
    """Exactly one sealer per log: an exclusive ``flock`` on ``<db>.sealer.lock`` beside the
    SQLite file, held while the sealer runs. Every process on a SQLite file runs on its host, so
    a second sealer there is refused at start; the kernel drops the lock when its holder dies
    (SIGKILL included), so there is no stale lease to clear."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, db: str) -> SealerLock | None:
        """Take the lock for the log in ``db``; None for a non-file location (PostgreSQL)."""
        if db.startswith("postgres"):
            return None
        path = Path(db[len("sqlite:///"):] if db.startswith("sqlite:///") else db)
        path = path.with_name(path.name + ".sealer.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ServiceError(f"cannot open the sealer lock {path}: {exc.strerror}",
                               path=str(path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ServiceError(
                f"another sealer already runs on {db} ({holder} holds {path}); exactly one "
                "sealer may extend a log: stop it, or run this process without the sealer role "
                "(e.g. --role ingest)",
                path=str(path), holder=holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def ops_app(ingest: Ingest | None) -> FastAPI:
    """``/metrics`` and ``/healthz`` for a process without the API role (an ingest worker, a
    sealer): the Prometheus counters of what it runs, and whether its ingest is subscribed."""
    app = FastAPI(title="meterchain backend worker", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        ok = ingest is None or ingest.connected.is_set()
        body: dict[str, object] = {"ok": ok}
        if ingest is not None:
            body["ingest"] = {"client_id": ingest.client_id, "connected": ok,
                              "stats": dict(ingest.stats)}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def log_app(db: str, ingest: Ingest | None) -> FastAPI:
    """The api role on PostgreSQL: the public tlog-tiles routes (``/checkpoint``, ``/tile/…``,
    ``/batch/…``: what mirrors and monitors read) beside ``/metrics`` and ``/healthz``. Every
    other route reads tables that only the SQLite store has (docs/backend.md, "PostgreSQL")."""
    opened: list[Store] = []  # the reader, while the app's lifespan runs

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        opened.append(await open_store(db))
        try:
            yield
        finally:
            await opened.pop().close()

    def reader() -> LogStore:
        return opened[0]

    app = ops_app(ingest)
    app.router.lifespan_context = lifespan
    app.include_router(log_router(reader))

    @app.exception_handler(ApiError)
    async def _api_error(_: object, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail, "hint": exc.hint},
                            status_code=exc.status)

    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: BackendConfig, *, stop: asyncio.Event | None = None,
                ready: asyncio.Event | None = None,
                clock: Callable[[], float] = time.time) -> None:
    """Run ``config.roles`` until ``stop`` is set or a signal arrives. ``clock`` is the
    settlement's time (tests run it accelerated, with the meters' and agents' clocks)."""
    roles = set(config.roles)
    on_postgres = is_postgres(config.db)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as resources:
        resources.callback(_remove_signal_handlers, loop)
        signer = (load_or_create_log_key(config.log_key, config.origin,
                                         create="sealer" in roles)
                  if "sealer" in roles or ("api" in roles and not on_postgres) else None)
        tasks: set[asyncio.Task[object]] = set()
        try:  # a part that fails to start stops the ones already running
            sealer: Sealer | None = None
            if "sealer" in roles:
                lock = SealerLock.acquire(config.db)  # before the sealer touches the tree
                sealing: Store
                if lock is not None:
                    resources.callback(lock.release)
                    sealing = await _store(resources, config.db)
                else:  # PostgreSQL: a session lock of the store, held until it closes
                    claimed = await open_postgres(config.db)
                    resources.push_async_callback(claimed.close)
                    await claimed.claim_sealer()
                    sealing = claimed
                assert signer is not None
                cosigning = cosigning_from(config.witness_policy, sealing, timeout=config.witness_timeout)
                if cosigning is not None:  # docs/witness.md
                    resources.push_async_callback(cosigning.close)
                # Receipts to gateways once a checkpoint meets the witness policy (issue 17).
                receipts = ReceiptSender(await _store(resources, config.db),
                                         cosigning.policy if cosigning else None,
                                         broker=broker_address(config.broker),
                                         client_id=config.worker_client_id() + "-receipts")
                sealer = Sealer(sealing, signer, interval=config.seal_interval,
                                max_leaves=config.seal_max_leaves, coalesce=config.seal_coalesce or None,
                                on_sealed=on_sealed(cosigning, receipts))
                await sealer.start()  # refuse to run on a tree that does not match its checkpoint
                if cosigning is not None:
                    await cosigning.resume()
                await receipts.resume()
                tasks.add(asyncio.create_task(receipts.run(), name="receipts"))
                resources.push_async_callback(_seal_pending, sealer)  # after the tasks stopped
                tasks.add(asyncio.create_task(sealer.run(), name="sealer"))
                if on_postgres:
                    log.warning("serve: PostgreSQL runs the sealer alone; the settlement runner "
                                "and the webhook worker need the SQLite tables (docs/backend.md, "
                                "\"PostgreSQL\") and are not started")
                else:
                    # bindings not logged yet (made before migration 15): idempotent (issue 17)
                    await AssignmentTables(await _sqlite(resources, config.db)).backfill(int(time.time()))
                    settlement = SettlementRunner(await _sqlite(resources, config.db),
                                                  clock=clock, every=config.settle_every,
                                                  on_commit=sealer.notify)
                    webhooks = WebhookWorker(await _sqlite(resources, config.db))  # announcements
                    tasks |= {asyncio.create_task(settlement.run(), name="settlement"),
                              asyncio.create_task(webhooks.run(), name="webhooks")}
            control: tuple[NoteSigner, ...] = ()
            if "sealer" in roles or "ingest" in roles:  # acks are signed (issue 14)
                control = await load_or_create_control_key(
                    config.control_key_path(), config.origin, await _store(resources, config.db),
                    create="sealer" in roles, wait=60.0)
            ingest: Ingest | None = None
            if "ingest" in roles:
                ingest = Ingest(await _store(resources, config.db), broker_url=config.broker,
                                client_id=config.worker_client_id(),
                                batch_size=config.batch_size,
                                verify_threads=config.verify_threads,
                                check_processes=config.check_processes,
                                share_group=config.share_group, control=control,
                                on_commit=sealer.notify if sealer is not None else None)
                resources.callback(ingest.close)
                tasks.add(asyncio.create_task(ingest.run(), name="ingest"))
            if "api" in roles and on_postgres:
                app = log_app(config.db, ingest)
                log.warning("serve: on PostgreSQL the api role serves the public log only "
                            "(/checkpoint, /tile, /batch, /api/v1/proofs/consistency); readings, access, settlement, "
                            "utilities, provisioning and the dashboard need SQLite")
            elif "api" in roles:
                assert signer is not None
                app = create_app(config.db, config.admin_token, signer.verifier,
                                 settings_from_config(config))
                tasks.add(asyncio.create_task(  # live, unsigned
                    subscribe(app.state.web.live, config.broker,
                              config.worker_client_id() + "-telemetry"), name="telemetry"))
                registry = await _store(resources, config.db)  # enrolled devices only
                tasks.add(asyncio.create_task(keep_enrolled(app.state.web.live, registry.devices),
                                              name="telemetry-devices"))
            else:
                app = ops_app(ingest)
            server = _Server(uvicorn.Config(app, host=config.http_host, port=config.http_port,
                                            log_level="warning", lifespan="on"))
            tasks.add(asyncio.create_task(server.serve(), name="http"))
            log.info("serve: roles %s%s", ",".join(config.roles),
                     f", share group {config.share_group}" if config.share_group else "")
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        await _run(tasks, stop, server, ingest, ready)


async def _store(resources: contextlib.AsyncExitStack, db: str) -> Store:
    """A connection of its own for one part, closed when ``serve`` ends."""
    store = await open_store(db)
    resources.push_async_callback(store.close)
    return store


async def _sqlite(resources: contextlib.AsyncExitStack, db: str) -> SqliteStore:
    """:func:`_store` for a part that needs the SQLite-only tables (settlement, webhooks)."""
    store = await open_sqlite(db)
    resources.push_async_callback(store.close)
    return store


async def _seal_pending(sealer: Sealer) -> None:
    with contextlib.suppress(Exception):
        await sealer.seal_all()


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)


async def _run(tasks: set[asyncio.Task[object]], stop: asyncio.Event, server: _Server,
               ingest: Ingest | None, ready: asyncio.Event | None) -> None:
    """Wait for a stop request or for a part to end (an error in one stops them all)."""
    stopper = asyncio.create_task(stop.wait(), name="stop")
    waiting: set[asyncio.Task[object]] = {*tasks, stopper}
    if ready is not None:
        async def announce() -> None:
            while not server.started:
                await asyncio.sleep(0.02)
            if ingest is not None:
                await ingest.connected.wait()
            ready.set()
        waiting.add(asyncio.create_task(announce(), name="ready"))
    try:
        running = True
        while running:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.get_name() == "ready":
                    continue
                running = False  # a stop request, or a part that ended: shut everything down
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        server.should_exit = True
        for task in waiting:
            if task.get_name() != "http":
                task.cancel()
        await asyncio.gather(*tasks, *waiting, return_exceptions=True)
