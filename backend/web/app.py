"""Wiring of the household dashboard into the API app: templates, static files, sign-in pages.

Who may see a household's pages is decided in one place, ``WebContext.household`` (context.py): a
session cookie names a login, the login names its household, and a URL that names any other
household is answered exactly like an unknown one (404), so changing the URL reveals nothing.
Readings are then read through the parties' visibility query with a household principal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from meterchain.backend.api.state import ApiState
from meterchain.backend.web import accounts, admin, erasure, market, pages, wallet
from meterchain.backend.web.context import (
    SESSION_COOKIE,
    PageError,
    SignInNeeded,
    WebContext,
    read_form,
    set_session_cookie,
)
from meterchain.backend.web.settlements import NoSettlements, Settlements
from meterchain.backend.web.tables import WebTables

HERE = Path(__file__).parent


def mount_web(app: FastAPI, state: ApiState, settlements: Settlements | None = None) -> WebContext:
    """Add the dashboard's routes, static files and error pages to ``app``."""
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
    app.include_router(market.router(ctx))  # before pages: its catch-all /{kind}/{key}
    app.include_router(wallet.router(ctx))
    app.include_router(pages.router(ctx))
    app.include_router(admin.router(ctx, state))
    erasure.install(app, ctx, state)  # "My data" (export, erase) and the admin erasure API
    return ctx


def _sign_in_router(ctx: WebContext) -> APIRouter:
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
        session = await ctx.write(lambda t: t.create_session(login.username, now))
        response = RedirectResponse(f"/households/{login.household}", status_code=303)
        set_session_cookie(response, request, str(session))
        return response

    @router.api_route("/invite/{token}", methods=["GET", "POST"])
    async def invite(request: Request, token: str) -> Response:
        return await _link_page(request, "invite", token)

    @router.api_route("/reset/{token}", methods=["GET", "POST"])
    async def reset(request: Request, token: str) -> Response:
        return await _link_page(request, "reset", token)

    return router
