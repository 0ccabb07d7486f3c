"""Request limits in front of the API: a token bucket per caller (429 with Retry-After) and a
request-size cap (413), as one pure ASGI middleware; no dependency.

The caller is its bearer token (hashed; the token itself is not kept) or, without one, its client
address. Buckets live in memory, per backend process: a limit against runaway clients and floods,
not an accounting system.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenBuckets:
    """``rate`` requests per second per key, bursts of up to ``burst``; pure (time passed in)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """Take one token; 0 if granted, else the seconds until one is available."""
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._forget_full(now)
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled (they carry no state); all of them if none has."""
        full = [k for k, (t, last) in self._buckets.items()
                if t + (now - last) * self.rate >= self.burst]
        for k in full or list(self._buckets):
            del self._buckets[k]


class _TooLarge(Exception):
    pass


class RequestLimits:
    """ASGI middleware: 413 over ``max_body`` bytes, 429 over the caller's rate."""

    def __init__(self, app: ASGIApp, *, max_body: int = 256 * 1024, rate: float = 50.0,
                 burst: int = 200, clock: Callable[[], float] = time.monotonic,
                 exempt: tuple[str, ...] = ("/healthz", "/metrics")) -> None:
        self.app, self.max_body, self.clock, self.exempt = app, max_body, clock, exempt
        self.buckets = TokenBuckets(rate, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _error(send, 413, "too-large",
                         f"the request body is over {self.max_body} bytes",
                         "send a smaller request (page through lists instead)")
            return
        wait = self.buckets.take(_caller(scope, headers), self.clock())
        if wait > 0:
            retry = max(1, math.ceil(wait))
            await _error(send, 429, "rate-limited", "too many requests from this key or address",
                         f"wait {retry} s (Retry-After) and slow down",
                         [(b"retry-after", str(retry).encode())])
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _error(send, 413, "too-large",
                             f"the request body is over {self.max_body} bytes",
                             "send a smaller request")


def _caller(scope: Scope, headers: dict[bytes, bytes]) -> str:
    token = headers.get(b"authorization")
    if token:
        return "k:" + hashlib.sha256(token).hexdigest()[:32]
    client = scope.get("client")
    return "a:" + (str(client[0]) if client else "unknown")


async def _error(send: Send, status: int, error: str, detail: str, hint: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": error, "detail": detail, "hint": hint}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
