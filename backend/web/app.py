"""Wiring of the household dashboard into the API app: templates, static files, sign-in pages.

Who may see a household's pages is decided in one place, :func:`WebContext.household`: a
session cookie names a login, the login names its household, and a URL that names any other
household is answered exactly like an unknown one (404), so changing the URL reveals nothing.
Readings are then read through the parties' visibility query with a household principal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from meterchain.backend.access.model import KeyKind, Principal, Scope
from meterchain.backend.api.state import ApiState
from meterchain.backend.store.sqlite import SqliteStore
from meterchain.backend.web import accounts
from meterchain.backend.web.live import LiveTelemetry
from meterchain.backend.web.settlements import NoSettlements, Settlements
from meterchain.backend.web.tables import Session, WebTables

HERE = Path(__file__).parent
SESSION_COOKIE = "mc_session"
MAX_FORM_BYTES = 4096


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
        assert self.api.reader is not None
        return self.api.reader

    async def write(self, work: Callable[[WebTables], object]) -> object:
        """Run ``work`` on the writer connection, behind the API's write lock."""
        assert self.api.writer is not None
        async with self.api.write_lock:
            return await work(WebTables(self.api.writer))  # type: ignore[misc]

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


def mount_web(app: FastAPI, state: ApiState, settlements: Settlements | None = None) -> WebContext:
    """Add the dashboard's routes, static files and error pages to ``app``."""
    from meterchain.backend.web import admin, erasure, pages

    templates = Jinja2Templates(directory=HERE / "templates")
    ctx = WebContext(state, templates, settlements=settlements or NoSettlements())
    app.state.web = ctx
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> HTMLResponse:
        return ctx.render(request, "error.html", exc.status, message=exc.message)

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, _: SignInNeeded) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    app.include_router(_sign_in_router(ctx))
    app.include_router(pages.router(ctx))
    app.include_router(admin.router(ctx, state))
    erasure.install(app, ctx, state)  # "My data" (export, erase) and the admin erasure API
    return ctx


def _sign_in_router(ctx: WebContext) -> APIRouter:
    import asyncio

    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def home(request: Request) -> Response:
        found = await ctx.session(request)
        if found is None:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse(f"/households/{found[1].household}", status_code=303)

    @router.get("/login")
    async def login_form(request: Request) -> HTMLResponse:
        return ctx.render(request, "login.html")

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        username = form.get("username", "").strip().lower()[:64]
        password = form.get("password", "")[: accounts.PASSWORD_MAX]
        stored = await WebTables(ctx.store).login(username)
        ok, rehash = await asyncio.to_thread(
            accounts.verify_password, password, stored.password_hash if stored else None)
        if not ok or stored is None:
            return ctx.render(request, "login.html", 401, username=username,
                              error="Wrong user name or password.")
        now = ctx.now()
        if rehash is not None:
            await ctx.write(lambda t: t.set_password_hash(username, rehash, now))
        token = await ctx.write(lambda t: t.create_session(username, now))
        response = RedirectResponse(f"/households/{stored.household}", status_code=303)
        set_session_cookie(response, request, str(token))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await ctx.write(lambda t: t.end_session(token))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def _link_page(request: Request, kind: str, token: str) -> Response:
        link = await WebTables(ctx.store).link(token, kind, ctx.now())
        if link is None:
            raise PageError(410, "This link has expired or was used already. Ask your energy "
                                 "community's operator for a new one.")
        if request.method == "GET":
            return ctx.render(request, "set_password.html", kind=kind, username=link.username)
        form = await read_form(request)
        try:
            username = (accounts.check_username(form.get("username", "")) if kind == "invite"
                        else link.username)
            password = accounts.check_password(form.get("password", ""), form.get("repeat", ""))
        except accounts.AccountError as exc:
            return ctx.render(request, "set_password.html", 400, kind=kind,
                              username=form.get("username", link.username), error=str(exc))
        hashed = await asyncio.to_thread(accounts.hash_password, password)
        now = ctx.now()
        try:
            if kind == "invite":
                login = await ctx.write(lambda t: t.accept_invite(token, str(username), hashed, now))
            else:
                login = await ctx.write(lambda t: t.reset_password(token, hashed, now))
        except accounts.AccountError as exc:
            return ctx.render(request, "set_password.html", 400, kind=kind, username=username,
                              error=str(exc))
        session = await ctx.write(lambda t: t.create_session(login.username, now))  # type: ignore[attr-defined]
        response = RedirectResponse(f"/households/{login.household}", status_code=303)  # type: ignore[attr-defined]
        set_session_cookie(response, request, str(session))
        return response

    @router.api_route("/invite/{token}", methods=["GET", "POST"])
    async def invite(request: Request, token: str) -> Response:
        return await _link_page(request, "invite", token)

    @router.api_route("/reset/{token}", methods=["GET", "POST"])
    async def reset(request: Request, token: str) -> Response:
        return await _link_page(request, "reset", token)

    return router
