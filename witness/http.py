"""The witness's HTTP shell: a bare ASGI app over :class:`WitnessStore`, served by uvicorn.

``POST <prefix>/add-checkpoint`` and ``GET <prefix>/<sha256 hex of the origin>/checkpoint``
(tlog-witness); anything else is 404 (405 for another method on a known path). It only moves
bytes: every decision is in protocol.py and store.py.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar, cast

from meterchain.contract.errors import MeterchainError
from meterchain.witness.config import WitnessConfig
from meterchain.witness.protocol import MAX_BODY, TEXT, WitnessRefusal, parse_request
from meterchain.witness.store import WitnessStore
from meterchain.witness.store_pg import PgWitnessStore

log = logging.getLogger("meterchain.witness")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_T = TypeVar("_T")


async def _resolved(value: Awaitable[_T] | _T) -> _T:
    # SQLite answers at once (store.py, a few ms under its lock); PostgreSQL is awaited.
    if inspect.isawaitable(value):
        return cast(_T, await value)
    return value


class WitnessApp:
    """ASGI application of one witness."""

    def __init__(self, config: WitnessConfig, store: WitnessStore | PgWitnessStore) -> None:
        self.config = config
        self.store = store
        self.by_hash = {hashlib.sha256(origin.encode()).hexdigest(): origin for origin in config.logs}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        prefix = self.config.prefix
        rest = path[len(prefix):] if path.startswith(prefix + "/") else None
        if rest == "/add-checkpoint":
            if scope["method"] != "POST":
                await _respond(send, 405, "add-checkpoint takes POST\n", allow="POST")
                return
            body = await _read_body(receive)
            status, text, content_type = await self.add_checkpoint(body)
            await _respond(send, status, text, content_type)
        elif rest is not None and rest.endswith("/checkpoint") and rest.count("/") == 2:
            if scope["method"] not in ("GET", "HEAD"):
                await _respond(send, 405, "checkpoint takes GET\n", allow="GET")
                return
            origin = self.by_hash.get(rest[1:-len("/checkpoint")])
            stored = await _resolved(self.store.latest(origin)) if origin else None
            if stored is None:
                await _respond(send, 404, "this witness has cosigned no checkpoint of that log\n")
            else:
                await _respond(send, 200, stored.note, TEXT)
        else:
            await _respond(send, 404, f"no such endpoint; POST {prefix}/add-checkpoint\n")

    async def add_checkpoint(self, body: bytes | None) -> tuple[int, str, str]:
        """(status, body, content type) for one add-checkpoint request; never raises."""
        try:
            if body is None:
                raise WitnessRefusal(400, f"request body is larger than {MAX_BODY} bytes")
            line = await _resolved(self.store.add_checkpoint(parse_request(body), self.config.logs,
                                                             self.config.cosigner))
        except WitnessRefusal as refusal:
            log.info("add-checkpoint refused (%d): %s", refusal.status, refusal)
            return refusal.status, refusal.body, refusal.content_type
        except MeterchainError as exc:  # pragma: no cover - every contract error is mapped above
            log.error("add-checkpoint: %s", exc.diagnostics())
            return 500, "internal error\n", TEXT
        return 200, line, TEXT


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, text: str, content_type: str = TEXT, **extra: str) -> None:
    body = text.encode()
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve(config: WitnessConfig, store: WitnessStore | PgWitnessStore) -> None:
    """Serve until cancelled (uvicorn handles SIGINT/SIGTERM)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(WitnessApp(config, store), host=config.host, port=config.port,
                                           log_level="warning", access_log=False, lifespan="off"))
    log.info("witness %s listening on %s:%d, logs: %s", config.cosigner.name, config.host, config.port,
             ", ".join(config.logs))
    await server.serve()
