"""The operator console's pages under /console: sign-in with a password and a TOTP code, fleet
health, households and their invitations, API keys, webhooks and dead letters, the log.

Server-rendered (Jinja, no script, no CDN) and usable on a phone. A console session is its own
cookie (``mc_console``, path /console): a household's session or a bearer key opens no console
page. Auditors read; operators act, and every form carries a per-session CSRF token. Each action
calls the same tables the API uses (``/api/v1/keys/{id}/rotate``, ``.../replay``, ...).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import pyotp
import segno
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from meterchain.backend.access.auth import Auth, build_auth
from meterchain.backend.access.model import ApiKey, KeyKind, PartyError
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.state import ApiState
from meterchain.backend.console.tables import Account, ConsoleTables, totp_step, totp_uri
from meterchain.backend.provisioning.routes import provision_command
from meterchain.backend.provisioning.tables import ProvisioningTables
from meterchain.backend.provisioning.tokens import ProvisioningError, Scope, issue_token
from meterchain.backend.settlement.tables import SettlementTables
from meterchain.backend.store import SqliteStore
from meterchain.backend.utility.routes import DEFAULT_SILENT_AFTER, fleet_health
from meterchain.backend.utility.tables import UtilityTables
from meterchain.backend.web import accounts
from meterchain.backend.web.accounts import AccountError
from meterchain.backend.web.context import read_form
from meterchain.backend.web.tables import WebTables
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_ago, human_duration, human_interval, human_time, iso
from meterchain.contract.note import split_note
from pydantic import BaseModel, ConfigDict, Field

HERE = Path(__file__).parent
COOKIE = "mc_console"
T = TypeVar("T")


class ConsolePageError(Exception):
    """Answered as the console's error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ConsoleSignIn(Exception):
    """No console session: answered by a redirect to /console/login."""


@dataclass
class ConsoleContext:
    api: ApiState
    templates: Jinja2Templates
    clock: Callable[[], float] = time.time
    zone: str | None = None  # None: the server's local zone
    public_url: str = ""

    def now(self) -> int:
        return int(self.clock())

    @property
    def store(self) -> SqliteStore:
        return self.api.read()

    async def write(self, work: Callable[[SqliteStore], Awaitable[T]]) -> T:
        assert self.api.writer is not None
        async with self.api.write_lock:
            return await work(self.api.writer)

    async def account(self, request: Request) -> tuple[str, Account]:
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 100:
            raise ConsoleSignIn()
        session = await ConsoleTables(self.store).session(token, self.now())
        if session is None:
            raise ConsoleSignIn()
        await self.write(lambda s: ConsoleTables(s).touch_session(token, self.now()))
        return token, session.account

    async def operator(self, request: Request) -> tuple[str, Account, dict[str, str]]:
        """The signed-in operator posting a form with a valid CSRF token; auditors are refused."""
        token, account = await self.account(request)
        form = await read_form(request)
        if not hmac.compare_digest(form.get("csrf", ""), csrf_token(token)):
            raise ConsolePageError(403, "This form is out of date; go back, reload the page and try again.")
        if not account.may_act:
            raise ConsolePageError(403, "Auditors read the console; only operators may change anything.")
        return token, account, form

    def render(self, request: Request, name: str, token: str | None, account: Account | None,
               status: int = 200, **values: object) -> HTMLResponse:
        values |= {"account": account, "csrf": csrf_token(token) if token else "",
                   "when": lambda ts, never="never": human_time(ts, self.zone, never=never),
                   "ago": lambda ts: human_ago(ts, self.now(), self.zone),
                   "span": human_duration, "interval": lambda a, b: human_interval(a, b, self.zone),
                   "iso": iso}
        return self.templates.TemplateResponse(request, name, values, status_code=status)


def csrf_token(session_token: str) -> str:
    return hashlib.sha256(b"console-csrf:" + session_token.encode()).hexdigest()[:32]


def qr_svg(text: str) -> str:
    return segno.make(text, error="m").svg_inline(scale=4, dark="#111", light="#fff")


def _visible_keys(account: Account, keys: list[ApiKey]) -> list[ApiKey]:
    if account.everything:
        return keys
    return [k for k in keys if k.kind is KeyKind.UTILITY and k.subject == account.utility]


def install_console(app: FastAPI, state: ApiState, public_url: str = "") -> ConsoleContext:
    """Add /console/* and its static files to ``app``; the context is ``app.state.console``.
    ``public_url``: the backend's address as gateways reach it (in installer commands)."""
    ctx = ConsoleContext(state, Jinja2Templates(directory=HERE / "templates"), public_url=public_url)
    app.state.console = ctx
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.exception_handler(ConsolePageError)
    async def _error(request: Request, exc: ConsolePageError) -> HTMLResponse:
        return ctx.render(request, "error.html", None, None, exc.status, message=exc.message)

    @app.exception_handler(ConsoleSignIn)
    async def _sign_in(request: Request, _: ConsoleSignIn) -> RedirectResponse:
        return RedirectResponse("/console/login", status_code=303)

    app.include_router(_router(ctx))
    app.include_router(_api_router(ctx, build_auth(state)))
    return ctx


class InvitationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["operator", "auditor"] = Field(description="operator: may act; auditor: reads only")
    scope: str = Field(default="all", pattern=r"^(all|utility:[A-Za-z0-9][A-Za-z0-9._:-]{0,63})$",
                       description="'all' (every utility and household) or 'utility:<id>'")


class InvitationOut(BaseModel):
    url: str = Field(description="The one-time link; it sets a password and enrols TOTP")
    role: str
    scope: str
    expires: int = Field(description="When the link stops working, Unix seconds (UTC)")
    expires_at: str = Field(description="The same as ISO 8601")


class AccountOut(BaseModel):
    username: str
    role: str
    scope: str


def _api_router(ctx: ConsoleContext, auth: Auth) -> APIRouter:
    """The console's accounts through the API too (admin only): what the CLI and the demo use."""
    r = APIRouter(prefix="/api/v1/console", tags=["operator console"],
                  dependencies=[Depends(auth.require_admin)])

    @r.post("/invitations", status_code=201, response_model=InvitationOut)
    async def invite(request: Request, body: InvitationIn) -> InvitationOut:
        """A one-time link (3 days) with which an operator or auditor creates a console account."""
        token, made = await ctx.write(lambda s: ConsoleTables(s).invite(body.role, body.scope, ctx.now()))
        return InvitationOut(url=f"{str(request.base_url).rstrip('/')}/console/invite/{token}",
                             role=made.role, scope=made.scope, expires=made.expires,
                             expires_at=iso(made.expires) or "")

    @r.get("/accounts", response_model=list[AccountOut])
    async def accounts_() -> list[AccountOut]:
        """Every console account (never its password hash or TOTP key)."""
        return [AccountOut(username=a.username, role=a.role, scope=a.scope)
                for a in await ConsoleTables(ctx.store).accounts()]

    return r


def _router(ctx: ConsoleContext) -> APIRouter:
    r = APIRouter(prefix="/console", include_in_schema=False)

    # ------------------------------------------------------------------ sign-in

    @r.get("/login")
    async def login_form(request: Request) -> HTMLResponse:
        return ctx.render(request, "login.html", None, None)

    @r.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        username = form.get("username", "").strip().lower()[:64]
        password = form.get("password", "")[: accounts.PASSWORD_MAX]
        account = await ConsoleTables(ctx.store).account(username)
        ok, _ = await asyncio.to_thread(accounts.verify_password, password,
                                        account.password_hash if account else None)
        now = ctx.now()
        step = totp_step(account.totp_secret, form.get("code", ""), now) if account else None
        if not ok or account is None or step is None or not await ctx.write(
                lambda s: ConsoleTables(s).use_totp_step(username, step)):
            return ctx.render(request, "login.html", None, None, 401, username=username,
                              error="Wrong user name, password or code (a code works once; wait "
                                    "for the next one).")
        token = await ctx.write(lambda s: ConsoleTables(s).create_session(username, now))
        response = RedirectResponse("/console", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/console",
                            secure=request.url.scheme == "https")
        return response

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        if token:
            await ctx.write(lambda s: ConsoleTables(s).end_session(token))
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    @r.get("/invite/{token}")
    async def invite_form(request: Request, token: str) -> HTMLResponse:
        invitation = await ConsoleTables(ctx.store).invitation(token, ctx.now())
        if invitation is None:
            raise ConsolePageError(410, "This invitation has expired or was used already; ask for a new one.")
        secret = pyotp.random_base32()
        return ctx.render(request, "invite.html", None, None, invitation=invitation, secret=secret,
                          qr=qr_svg(totp_uri(secret, "new operator")))

    @r.post("/invite/{token}")
    async def accept(request: Request, token: str) -> Response:
        tables = ConsoleTables(ctx.store)
        invitation = await tables.invitation(token, ctx.now())
        if invitation is None:
            raise ConsolePageError(410, "This invitation has expired or was used already; ask for a new one.")
        form = await read_form(request)
        secret = form.get("secret", "")
        now = ctx.now()
        try:
            username = accounts.check_username(form.get("username", ""))
            password = accounts.check_password(form.get("password", ""), form.get("repeat", ""))
            if len(secret) != 32 or not secret.isalnum():
                raise AccountError("the authenticator secret was changed; reload the page")
            step = totp_step(secret, form.get("code", ""), now)
            if step is None:
                raise AccountError("that code does not match: check the authenticator app's time "
                                   "and enter the current code", field="code")
            password_hash = await asyncio.to_thread(accounts.hash_password, password)
            await ctx.write(lambda s: ConsoleTables(s).accept(token, username, password_hash, secret,
                                                              step, now))
        except AccountError as exc:
            return ctx.render(request, "invite.html", None, None, 400, invitation=invitation,
                              secret=secret, qr=qr_svg(totp_uri(secret, "new operator")),
                              username=form.get("username", ""), error=str(exc))
        return RedirectResponse("/console/login?welcome=1", status_code=303)

    # ------------------------------------------------------------------ fleet

    @r.get("")
    async def fleet(request: Request, state: str = "all", q: str = "",
                    silent_after: str = str(DEFAULT_SILENT_AFTER)) -> HTMLResponse:
        token, account = await ctx.account(request)
        try:  # a filter typed by hand: anything not a number is the default, the range is clamped
            silent_after_s = max(60, min(int(silent_after), 30 * 86_400))
        except ValueError:
            silent_after_s = DEFAULT_SILENT_AFTER
        health = await fleet_health(ctx.store, account.principal(), silent_after_s, ctx.now())
        shown = [g for g in health.gateways
                 if (state == "all" or (state == "silent") == g.silent) and q.lower() in g.device.lower()]
        return ctx.render(request, "fleet.html", token, account, fleet=health, gateways=shown,
                          state=state, q=q[:64], silent_after=silent_after_s)

    # ------------------------------------------------------------------ households

    @r.get("/households")
    async def households(request: Request) -> HTMLResponse:
        token, account = await ctx.account(request)
        if not account.everything:
            raise ConsolePageError(403, "Households are managed by the backend's operator (scope 'all').")
        rows = []
        for h in await PartyTables(ctx.store).households():
            logins = await WebTables(ctx.store).logins(h.id)
            rows.append((h, logins))
        return ctx.render(request, "households.html", token, account, households=rows)

    @r.post("/households/{household}/invite")
    async def invite_household(request: Request, household: str) -> HTMLResponse:
        token, account, _ = await ctx.operator(request)
        if not account.everything:
            raise ConsolePageError(403, "Households are managed by the backend's operator (scope 'all').")
        try:
            secret, link = await ctx.write(
                lambda s: WebTables(s).create_link("invite", household, None, ctx.now()))
        except AccountError as exc:
            raise ConsolePageError(404, str(exc)) from None
        url = f"{str(request.base_url).rstrip('/')}/invite/{secret}"
        return ctx.render(request, "shown_once.html", token, account, title=f"Invitation for {household}",
                          what="invitation link", value=url, expires=link.expires, qr=qr_svg(url),
                          back="/console/households")

    @r.get("/points")
    async def points(request: Request) -> HTMLResponse:
        """Metering points with their meters and occupants over time (exchanges and moves)."""
        token, account = await ctx.account(request)
        parties = PartyTables(ctx.store)
        bindings, occupancies = await parties.meter_bindings(), await parties.occupancies()
        rows = []
        for ident in sorted({b.metering_point for b in bindings} | {o.metering_point for o in occupancies}):
            point = await parties.metering_point(ident)
            if point is None or not (account.everything or point.utility == account.utility):
                continue
            rows.append((point, [b for b in bindings if b.metering_point == ident],
                         [o for o in occupancies if o.metering_point == ident]))
        return ctx.render(request, "points.html", token, account, points=rows)

    # ------------------------------------------------------------------ API keys

    @r.get("/keys")
    async def keys(request: Request) -> HTMLResponse:
        token, account = await ctx.account(request)
        rows = _visible_keys(account, await PartyTables(ctx.store).keys())
        return ctx.render(request, "keys.html", token, account, keys=rows, now=ctx.now())

    async def own_key(account: Account, key_id: str) -> ApiKey:
        found = [k for k in _visible_keys(account, await PartyTables(ctx.store).keys()) if k.id == key_id]
        if not found:
            raise ConsolePageError(404, f"There is no key {key_id} you may manage.")
        return found[0]

    @r.post("/keys")
    async def create_key(request: Request) -> HTMLResponse:
        """A new key: the backend's operator for any utility, household or auditor grant; a utility's
        operator for its own utility only."""
        token, account, form = await ctx.operator(request)
        kind_name, subject = form.get("kind", ""), form.get("subject", "").strip()
        if not account.everything:
            kind_name, subject = "utility", account.utility or ""
        if kind_name not in ("utility", "household", "auditor"):
            raise ConsolePageError(400, "A key is for a utility, a household or an auditor grant.")
        try:
            key, secret = await ctx.write(lambda s: PartyTables(s).create_key(
                KeyKind(kind_name), subject, form.get("label", "").strip(), None, ctx.now()))
        except PartyError as exc:
            raise ConsolePageError(400 if exc.check == "invalid" else 404, str(exc)) from None
        return ctx.render(request, "shown_once.html", token, account, title=f"New key {key.id}",
                          what=f"API token of {key.kind.value} {key.subject}", value=secret,
                          expires=None, qr=None, back="/console/keys")

    @r.post("/keys/{key_id}/rotate")
    async def rotate(request: Request, key_id: str) -> HTMLResponse:
        token, account, form = await ctx.operator(request)
        await own_key(account, key_id)
        try:
            grace = int(form.get("grace", "86400"))
        except ValueError:
            raise ConsolePageError(400, "The grace period is a number of seconds.") from None
        try:
            key, secret = await ctx.write(lambda s: PartyTables(s).rotate_key(
                key_id, max(0, min(grace, 30 * 86_400)), ctx.now()))
        except PartyError as exc:
            raise ConsolePageError(409, str(exc)) from None
        return ctx.render(request, "shown_once.html", token, account, title=f"New key {key.id}",
                          what=f"API token of {key.kind.value} {key.subject} (replaces {key_id})",
                          value=secret, expires=key.expires, qr=None, back="/console/keys")

    @r.post("/keys/{key_id}/revoke")
    async def revoke(request: Request, key_id: str) -> Response:
        _, account, _ = await ctx.operator(request)
        await own_key(account, key_id)
        try:
            await ctx.write(lambda s: PartyTables(s).revoke_key(key_id, ctx.now()))
        except PartyError as exc:
            raise ConsolePageError(409, str(exc)) from None
        return RedirectResponse("/console/keys", status_code=303)

    # ------------------------------------------------------------------ webhooks

    @r.get("/webhooks")
    async def webhooks(request: Request) -> HTMLResponse:
        token, account = await ctx.account(request)
        tables = UtilityTables(ctx.store)
        hooks = await tables.webhooks(None if account.everything else account.utility)
        dead = {h.id: await tables.deliveries(h.id, "dead", 0, 100) for h in hooks}
        recent = {h.id: (await tables.deliveries(h.id, None, 0, 1000))[-10:][::-1] for h in hooks}
        return ctx.render(request, "webhooks.html", token, account, hooks=hooks, dead=dead, recent=recent)

    @r.post("/webhooks/{hook}/deliveries/{delivery}/replay")
    async def replay(request: Request, hook: str, delivery: int) -> Response:
        _, account, _ = await ctx.operator(request)
        found = await UtilityTables(ctx.store).webhook(hook)
        if found is None or not (account.everything or found.utility == account.utility):
            raise ConsolePageError(404, f"There is no webhook {hook} you may manage.")
        if not await ctx.write(lambda s: UtilityTables(s).replay(hook, delivery, ctx.now())):
            raise ConsolePageError(409, f"Delivery {delivery} is not in the dead-letter list any more.")
        return RedirectResponse("/console/webhooks", status_code=303)

    # ------------------------------------------------------------------ installer tokens

    def token_scopes(account: Account, options: list[str]) -> list[str]:
        return options if account.everything else [f"utility:{account.utility}"]

    @r.get("/tokens")
    async def tokens(request: Request) -> HTMLResponse:
        token, account = await ctx.account(request)
        parties = PartyTables(ctx.store)
        options = ([f"utility:{u.id}" for u in await parties.utilities()]
                   + [f"community:{c.id}" for c in await parties.communities()])
        rows = [t for t in await ProvisioningTables(ctx.store).tokens()
                if account.everything or f"{t.scope_kind}:{t.scope_id}" == account.scope]
        return ctx.render(request, "tokens.html", token, account, tokens=rows[::-1][:200],
                          scopes=token_scopes(account, options), now=ctx.now())

    @r.post("/tokens")
    async def issue(request: Request) -> HTMLResponse:
        token, account, form = await ctx.operator(request)
        scope = form.get("scope", "")
        if not account.everything and scope != account.scope:
            raise ConsolePageError(403, f"You may issue installer tokens for {account.scope} only.")
        try:
            hours = int(form.get("hours", "72"))
            issued = await ctx.write(lambda s: issue_token(s, Scope.parse(scope), ctx.now(), ttl=hours * 3600,
                                                           note=form.get("note", "")))
        except ValueError:
            raise ConsolePageError(400, "The lifetime is a whole number of hours.") from None
        except ProvisioningError as exc:
            raise ConsolePageError(exc.status, f"{exc} ({exc.hint})") from None
        command = provision_command(ctx.public_url.rstrip("/"), issued.token)
        return ctx.render(request, "shown_once.html", token, account, title=f"Installer token for {scope}",
                          what="command for the gateway (the token works once)", value=command,
                          expires=issued.expires, qr=qr_svg(command), back="/console/tokens")

    # ------------------------------------------------------------------ settlement

    @r.get("/settlement")
    async def settlement(request: Request) -> HTMLResponse:
        token, account = await ctx.account(request)
        tables = SettlementTables(ctx.store)
        now = ctx.now()
        communities = []
        for community in await tables.netting_communities():
            if not account.everything and await tables.community_utility(community) != account.utility:
                continue
            state = await tables.state(community)
            upto = state[1] if state else now
            recent = await tables.revisions(community, upto - 86_400, upto)
            exclusions = await tables.exclusions(community)
            communities.append({"id": community, "settled_upto": state[1] if state else None,
                                "recent": recent[::-1][:48],
                                "revised": sum(1 for x in recent if x.revision > 0),
                                "exclusions": exclusions[::-1][:100], "excluded": len(exclusions)})
        return ctx.render(request, "settlement.html", token, account, communities=communities)

    # ------------------------------------------------------------------ the log

    @r.get("/log")
    async def log(request: Request) -> HTMLResponse:
        token, account = await ctx.account(request)
        checkpoint = await ctx.store.latest_checkpoint()
        cosigners: list[str] = []
        if checkpoint is not None:
            origin = checkpoint.note.split("\n", 1)[0]
            try:
                cosigners = sorted({s.name for s in split_note(checkpoint.note)[1] if s.name != origin})
            except MeterchainError:
                cosigners = []
        return ctx.render(request, "log.html", token, account, checkpoint=checkpoint, cosigners=cosigners)

    return r
