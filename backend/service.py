"""``meterchain backend serve``: ingest, sealer and the HTTP API in one asyncio process.

Each part has its own database connection; a signal (SIGINT/SIGTERM) stops the API and the
ingest, seals what is pending, and closes the store cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from meterchain.backend.api import create_app
from meterchain.backend.config import BackendConfig
from meterchain.backend.ingest import Ingest
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.provisioning import settings_from_config
from meterchain.backend.settlement import SettlementRunner
from meterchain.backend.store import open_store
from meterchain.backend.webhooks import WebhookWorker
from meterchain.backend.web.live import subscribe
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteSigner

log = logging.getLogger(__name__)


class ServiceError(MeterchainError):
    check = "config"


def load_or_create_log_key(path: str | Path, origin: str) -> NoteSigner:
    """The log's Ed25519 note key; created (mode 0600) on first run. Its name is the origin."""
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
    signer = NoteSigner.generate(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(signer) + "\n")
    log.info("created log key %s (public: %s)", path, signer.verifier)
    return signer


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: BackendConfig, *, stop: asyncio.Event | None = None,
                ready: asyncio.Event | None = None,
                clock: Callable[[], float] = time.time) -> None:
    """Run until ``stop`` is set or a signal arrives. ``clock`` is the settlement's time (tests
    run it accelerated, with the meters' and agents' clocks)."""
    signer = load_or_create_log_key(config.log_key, config.origin)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)

    sealer = Sealer(await open_store(config.db), signer, interval=config.seal_interval,
                    max_leaves=config.seal_max_leaves)
    await sealer.start()  # refuse to run on a tree that does not match its checkpoint
    ingest = Ingest(await open_store(config.db), broker_url=config.broker,
                    client_id=config.client_id, batch_size=config.batch_size,
                    verify_threads=config.verify_threads, on_commit=sealer.notify)
    app = create_app(config.db, config.admin_token, signer.verifier, settings_from_config(config))
    server = _Server(uvicorn.Config(app, host=config.http_host, port=config.http_port,
                                    log_level="warning", lifespan="on"))
    settlement = SettlementRunner(await open_store(config.db), clock=clock,
                                  every=config.settle_every, on_commit=sealer.notify)
    webhooks = WebhookWorker(await open_store(config.db))  # utilities' batch announcements
    tasks = {
        asyncio.create_task(webhooks.run(), name="webhooks"),
        asyncio.create_task(settlement.run(), name="settlement"),
        asyncio.create_task(ingest.run(), name="ingest"),
        asyncio.create_task(sealer.run(), name="sealer"),
        asyncio.create_task(server.serve(), name="api"),
        asyncio.create_task(subscribe(app.state.web.live, config.broker, config.client_id
                                      + "-telemetry"), name="telemetry"),  # live, unsigned
    }
    stopper = asyncio.create_task(stop.wait(), name="stop")
    if ready is not None:
        async def announce() -> None:
            while not server.started:
                await asyncio.sleep(0.02)
            await ingest.connected.wait()
            ready.set()
        tasks.add(asyncio.create_task(announce(), name="ready"))
    try:
        pending: set[asyncio.Task[object]] = {*tasks, stopper}  # type: ignore[arg-type]
        running = True
        while running:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.get_name() == "ready":
                    continue
                running = False  # a stop request, or a part that ended: shut everything down
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        server.should_exit = True
        for task in tasks:
            if task.get_name() != "api":
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()
        with contextlib.suppress(Exception):
            await sealer.seal_all()
        ingest.close()
        await ingest.store.close()
        await webhooks.store.close()
        await sealer.store.close()
        await settlement.store.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
