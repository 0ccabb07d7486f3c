"""Erasure routes: the admin's (``/api/v1/households/<id>/erasure``) and the household's own
"My data" page (export, then erase after a confirmation step with its password).

Both call :func:`meterchain.backend.erasure.rules.erase_household` on the writer connection behind the
API's write lock. A household that erases its data loses its login with it: the page that
confirms the erasure is the last one its session sees.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local Annotated aliases.

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import HTMLResponse, Response
from meterchain.backend.access.auth import build_auth
from meterchain.backend.access.model import ID_PATTERN, Principal, UnknownParty
from meterchain.backend.api.errors import ApiError
from meterchain.backend.api.state import ApiState
from meterchain.backend.erasure.rules import erase_household, utc_day
from meterchain.backend.erasure.tables import ErasureRecord, ErasureTables
from meterchain.backend.web import accounts
from meterchain.backend.web.context import SESSION_COOKIE, WebContext, read_form
from meterchain.backend.web.tables import WebTables
from pydantic import BaseModel, ConfigDict, Field

Household = Annotated[str, Path(pattern=ID_PATTERN, description="Household id")]
#: What the household types on the confirmation step (besides its password).
CONFIRM_WORD = "erase"


class ErasureIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    confirm: str = Field(max_length=64, description="The household id again, to confirm")


class ErasureOut(BaseModel):
    id: int
    household: str
    requested_by: str
    time: int
    leaves: int = Field(description="Reading leaves whose data was erased")
    ranges: list[list[int]] = Field(description="Their leaf index ranges [first, last], sealed ones")
    unsealed: int = Field(description="Erased leaves not sealed yet then (hashes sealed later)")
    logins: int


class ErasureResult(BaseModel):
    erased_now: bool = Field(description="False: nothing was left to erase (erasing is idempotent)")
    erasure: ErasureOut | None = Field(description="This erasure, or the newest earlier one")


def _out(record: ErasureRecord) -> ErasureOut:
    return ErasureOut.model_validate(record.to_json())


def _actor(who: Principal) -> str:
    return f"admin:{who.key_id or 'root'}"


def install(app: FastAPI, ctx: WebContext, state: ApiState) -> None:
    """Add the admin erasure API and the household's "My data" pages to ``app``."""
    app.include_router(_admin_router(ctx, state))
    app.include_router(_page_router(ctx))


async def _erase(ctx: WebContext, household: str, requested_by: str) -> ErasureRecord | None:
    assert ctx.api.writer is not None
    async with ctx.api.write_lock:
        return await erase_household(ctx.api.writer, household, requested_by, ctx.now(),
                                     live=ctx.live)


def _admin_router(ctx: WebContext, state: ApiState) -> APIRouter:

    auth = build_auth(state)
    r = APIRouter(prefix="/api/v1/households", tags=["household access"])
    Admin = Annotated[Principal, Depends(auth.require_admin)]

    @r.post("/{household}/erasure", response_model=ErasureResult)
    async def erase(household: Household, body: ErasureIn, who: Admin) -> ErasureResult:
        """Erase the household's data: every reading of its metering points within its
        occupancies loses its values and signed message (leaf hash and index stay, so the log
        still verifies); its logins, sessions and links go, its API keys are revoked. An erasure
        record (who, when, how many leaves, index ranges; no values) is kept. Idempotent."""
        if body.confirm != household:
            raise ApiError(400, "not-confirmed", "confirm must repeat the household id",
                           f'send {{"confirm": "{household}"}}')
        try:
            record = await _erase(ctx, household, _actor(who))
        except UnknownParty as exc:
            raise ApiError(404, "not-found", str(exc), "check the household id") from None
        if record is not None:
            return ErasureResult(erased_now=True, erasure=_out(record))
        earlier = await ErasureTables(ctx.store).erasures(household)
        return ErasureResult(erased_now=False, erasure=_out(earlier[-1]) if earlier else None)

    @r.get("/{household}/erasures", response_model=list[ErasureOut])
    async def erasures(household: Household, who: Admin) -> list[ErasureOut]:
        """The household's erasure records, oldest first."""
        return [_out(x) for x in await ErasureTables(ctx.store).erasures(household)]

    return r


def _page_router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/households/{household}", include_in_schema=False)

    async def page(request: Request, household: str, status: int = 200, **values: object
                   ) -> HTMLResponse:
        session, _ = await ctx.household(request, household)
        erasable = await ErasureTables(ctx.store).erasable(household)
        earlier = await ErasureTables(ctx.store).erasures(household)
        return ctx.render(request, "my_data.html", status, household=household,
                          username=session.username, erasable=erasable, earlier=earlier,
                          utc_day=utc_day, confirm_word=CONFIRM_WORD, **values)

    @r.get("/data", response_class=HTMLResponse)
    async def my_data(request: Request, household: str) -> HTMLResponse:
        return await page(request, household)

    @r.post("/data/erase", response_class=HTMLResponse)
    async def erase(request: Request, household: str) -> Response:
        session, _ = await ctx.household(request, household)
        form = await read_form(request)
        if form.get("step") != "confirm":
            return await page(request, household, confirming=True)
        login = await WebTables(ctx.store).login(session.username)
        ok, _ = await asyncio.to_thread(
            accounts.verify_password, form.get("password", "")[: accounts.PASSWORD_MAX],
            login.password_hash if login else None)
        if not ok or form.get("word", "").strip().lower() != CONFIRM_WORD:
            return await page(request, household, 400, confirming=True,
                              error=f"Type “{CONFIRM_WORD}” and your password to confirm.")
        record = await _erase(ctx, household, f"household:{session.username}")
        response = ctx.render(request, "erased.html", record=record, utc_day=utc_day)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return r
