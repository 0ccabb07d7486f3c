"""What the dashboard's routers share: the per-app :class:`WebContext`, the page errors, the
session cookie and the small form reader. A module of its own so the routers (pages, admin,
erasure) and the wiring in ``app.py`` import it one way, without cycles.

Who may see a household's pages is decided in one place, :meth:`WebContext.household`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from meterchain.backend.access.model import KeyKind, Principal, Scope
from meterchain.backend.api.state import ApiState
from meterchain.backend.store import SqliteStore
from meterchain.backend.web import accounts
from meterchain.backend.web.live import LiveTelemetry
from meterchain.backend.web.settlements import NoSettlements, Settlements
from meterchain.backend.web.tables import Session, WebTables

SESSION_COOKIE = "mc_session"
MAX_FORM_BYTES = 4096

T = TypeVar("T")


class PageError(Exception):
    """Answered as an HTML error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class SignInNeeded(Exception):
    """No valid session: answered by a redirect to the sign-in page."""


@dataclass
class WebContext:
    """What every page handler needs; kept on ``app.state.web``."""

    api: ApiState
    templates: Jinja2Templates
    live: LiveTelemetry = field(default_factory=LiveTelemetry)
    settlements: Settlements = field(default_factory=NoSettlements)
    clock: Callable[[], float] = time.time

    def now(self) -> int:
        return int(self.clock())

    @property
    def store(self) -> SqliteStore:
        """The reader connection (the dashboard's tables are SQLite-only)."""
        return self.api.read()

    async def write(self, work: Callable[[WebTables], Awaitable[T]]) -> T:
        """Run ``work`` on the writer connection, behind the API's write lock."""
        assert self.api.writer is not None
        async with self.api.write_lock:
            return await work(WebTables(self.api.writer))

    async def session(self, request: Request) -> tuple[str, Session] | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token or len(token) > 100:
            return None
        session = await WebTables(self.store).session(token, self.now())
        return None if session is None else (token, session)

    async def household(self, request: Request, household: str) -> tuple[Session, Principal]:
        """The signed-in household if it is ``household``; else a redirect or a 404."""
        found = await self.session(request)
        if found is None:
            raise SignInNeeded()
        token, session = found
        if session.household != household:
            raise PageError(404, "There is no such page.")
        await self.write(lambda t: t.touch_session(token, self.now()))
        return session, Principal(KeyKind.HOUSEHOLD, household, frozenset({Scope.READ}))

    def render(self, request: Request, name: str, status: int = 200, **values: object
               ) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, values, status_code=status)


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (no multipart dependency); oversized bodies are refused."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, "That form was too large.")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "That form could not be read.") from None
    return {k: v[0] for k, v in fields.items()}


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=accounts.SESSION_SECONDS, httponly=True,
                        samesite="lax", secure=request.url.scheme == "https", path="/")
