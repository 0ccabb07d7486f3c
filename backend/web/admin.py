"""Admin routes for household access: invitation and password-reset links, time zones.

An operator (admin key or token) issues a one-time link and hands it to the household (mail,
letter, QR code); the link is shown once, only its SHA-256 is kept. Households and their metering
points themselves are created with the parties API (``/api/v1/...`` of ``api_access.py``).
"""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, Path, Request
from meterchain.backend.access.auth import build_auth
from meterchain.backend.access.model import ID_PATTERN
from meterchain.backend.api.errors import ApiError
from meterchain.backend.api.state import ApiState
from meterchain.backend.web.accounts import USERNAME_PATTERN, AccountError
from meterchain.backend.web.context import WebContext
from meterchain.backend.web.tables import WebTables
from pydantic import BaseModel, ConfigDict, Field

Household = Annotated[str, Path(pattern=ID_PATTERN, description="Household id")]
Username = Annotated[str, Path(pattern=USERNAME_PATTERN, description="Login user name")]


class LinkOut(BaseModel):
    url: str = Field(description="Open once to set a password; shown only now")
    expires: int


class LoginOut(BaseModel):
    username: str
    has_password: bool


class TimezoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    timezone: str = Field(min_length=1, max_length=64, description="IANA name, e.g. Europe/Berlin")


def router(ctx: WebContext, state: ApiState) -> APIRouter:

    auth = build_auth(state)
    r = APIRouter(prefix="/api/v1/households", tags=["household access"],
                  dependencies=[Depends(auth.require_admin)])

    async def link(request: Request, kind: str, household: str, username: str | None) -> LinkOut:
        try:
            token, made = await ctx.write(
                lambda t: t.create_link(kind, household, username, ctx.now()))
        except AccountError as exc:
            raise ApiError(404, "not-found", str(exc),
                           "create the household first (parties API), or check the user name") from None
        base = str(request.base_url).rstrip("/")
        return LinkOut(url=f"{base}/{kind}/{token}", expires=made.expires)

    @r.post("/{household}/invitations", status_code=201, response_model=LinkOut)
    async def invite(request: Request, household: Household) -> LinkOut:
        """A one-time link (7 days) with which a member of the household creates its login."""
        return await link(request, "invite", household, None)

    @r.post("/{household}/logins/{username}/reset", status_code=201, response_model=LinkOut)
    async def reset(request: Request, household: Household, username: Username) -> LinkOut:
        """A one-time link (24 h) to choose a new password; it ends the login's sessions."""
        return await link(request, "reset", household, username)

    @r.get("/{household}/logins", response_model=list[LoginOut])
    async def logins(household: Household) -> list[LoginOut]:
        """The household's logins (never their hashes)."""
        return [LoginOut(username=x.username, has_password=x.password_hash is not None)
                for x in await WebTables(ctx.store).logins(household)]

    @r.put("/{household}/timezone", status_code=204)
    async def timezone(household: Household, body: TimezoneIn) -> None:
        """The household's local time zone: days, weeks and months of its pages follow it."""
        try:
            ZoneInfo(body.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ApiError(400, "invalid", f"unknown time zone {body.timezone!r}",
                           "use an IANA name such as Europe/Berlin") from None
        try:
            await ctx.write(lambda t: t.set_timezone(household, body.timezone))
        except AccountError as exc:
            raise ApiError(404, "not-found", str(exc), "check the household id") from None

    return r
