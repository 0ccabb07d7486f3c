"""HTTP routes that manage who may see what: parties, metering points, bindings, auditor grants
and API keys (admin), plus ``whoami`` and self-service rotation/revocation for any key holder.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local Annotated aliases.

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Path
from meterchain.backend.access.auth import Auth
from meterchain.backend.access.model import (
    DEVICE_PATTERN,
    ID_PATTERN,
    METER_PATTERN,
    NAME_MAX,
    ApiKey,
    KeyKind,
    MeterBinding,
    Occupancy,
    PartyError,
    PointKind,
    Principal,
)
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.errors import CHECK_STATUS, ApiError
from meterchain.backend.api.state import ApiState
from meterchain.contract.reading import MAX_SAFE_INT
from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
Id = Annotated[str, Field(pattern=ID_PATTERN)]
Name = Annotated[str, Field(max_length=NAME_MAX)]
Time = Annotated[int, Field(ge=0, le=MAX_SAFE_INT, description="UTC seconds")]
Point = Annotated[str, Path(pattern=ID_PATTERN, description="Metering point id")]
KeyId = Annotated[str, Path(pattern=r"^k-[0-9a-f]{12}$", description="A key's public id")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class UtilityIn(_Strict):
    id: Id
    name: Name = ""


class CommunityIn(_Strict):
    id: Id
    utility: Id
    name: Name = ""


class HouseholdIn(_Strict):
    id: Id
    community: Id
    name: Name = ""


class PointIn(_Strict):
    id: Id
    utility: Id
    community: Id | None = None
    kind: PointKind = Field(description="consumption, generation, heat-pump, ev-charger, battery, other")
    model_config = ConfigDict(extra="forbid", strict=False)  # enum from its JSON text


class MeterBindingIn(_Strict):
    device: str = Field(pattern=DEVICE_PATTERN)
    meter: str = Field(pattern=METER_PATTERN)
    valid_from: Time
    valid_to: Time | None = Field(default=None, description="Exclusive; omit for open-ended")


class OccupancyIn(_Strict):
    household: Id
    valid_from: Time
    valid_to: Time | None = None


class EndIn(_Strict):
    valid_to: Time = Field(description="The binding covers readings ending before this")


class GrantIn(_Strict):
    id: Id
    label: Name = ""
    expires: Time
    metering_points: list[Id] = Field(default_factory=list, max_length=10_000)
    communities: list[Id] = Field(default_factory=list, max_length=1000)


class KeyIn(_Strict):
    kind: KeyKind
    subject: Id | None = Field(default=None, description="utility, household or grant id; none for admin")
    label: Name = ""
    expires: Time | None = None
    model_config = ConfigDict(extra="forbid", strict=False)


class RotateIn(_Strict):
    grace: Annotated[int, Field(ge=0, le=MAX_SAFE_INT)] | None = Field(
        default=None, description="Seconds the old key stays valid; omit: until revoked")


class Created(BaseModel):
    id: str


class BindingOut(BaseModel):
    id: int
    metering_point: str
    device: str | None = None
    meter: str | None = None
    household: str | None = None
    valid_from: int
    valid_to: int | None


class BindingsOut(BaseModel):
    meters: list[BindingOut]
    occupancies: list[BindingOut]


class KeyOut(BaseModel):
    # pylint: disable=duplicate-code  # the response schema spells out the record's fields (scripts/check: duplicates)
    id: str
    kind: str
    subject: str
    label: str
    created: int
    expires: int | None
    revoked: int | None
    last_used: int | None
    replaces: str | None
    # pylint: enable=duplicate-code


class NewKeyOut(KeyOut):
    token: str = Field(description="Shown once: the backend keeps only its SHA-256")


class WhoAmI(BaseModel):
    kind: str
    id: str
    key_id: str | None
    scopes: list[str]


def _binding(b: MeterBinding | Occupancy) -> BindingOut:
    if isinstance(b, MeterBinding):
        return BindingOut(id=b.id, metering_point=b.metering_point, device=b.device, meter=b.meter,
                          valid_from=b.valid_from, valid_to=b.valid_to)
    return BindingOut(id=b.id, metering_point=b.metering_point, household=b.household,
                      valid_from=b.valid_from, valid_to=b.valid_to)


def _key_out(key: ApiKey, token: str | None = None) -> KeyOut:
    out = KeyOut(id=key.id, kind=key.kind.value, subject=key.subject, label=key.label,
                 created=key.created, expires=key.expires, revoked=key.revoked,
                 last_used=key.last_used, replaces=key.replaces)
    return out if token is None else NewKeyOut(token=token, **out.model_dump())


def access_router(state: "ApiState", auth: Auth) -> APIRouter:
    """Admin routes for parties, bindings, grants and keys; whoami and self-service for keys."""

    router = APIRouter(prefix="/api/v1", tags=["access"])
    admin = [Depends(auth.require_admin)]
    Caller = Annotated[Principal, Depends(auth.principal)]

    async def write(action: Callable[[PartyTables], Awaitable[T]]) -> T:
        assert state.writer is not None
        try:
            async with state.write_lock:
                return await action(PartyTables(state.writer))
        except PartyError as exc:
            raise ApiError(CHECK_STATUS.get(exc.check, 400), exc.check, str(exc),
                           "fix the request; `meterchain backend access list` shows what exists"
                           ) from None

    def now() -> int:
        return int(time.time())

    @router.post("/utilities", status_code=201, response_model=Created, dependencies=admin)
    async def add_utility(body: UtilityIn) -> Created:
        return Created(id=(await write(lambda t: t.add_utility(body.id, body.name, now()))).id)

    @router.post("/communities", status_code=201, response_model=Created, dependencies=admin)
    async def add_community(body: CommunityIn) -> Created:
        return Created(id=(await write(
            lambda t: t.add_community(body.id, body.utility, body.name, now()))).id)

    @router.post("/households", status_code=201, response_model=Created, dependencies=admin)
    async def add_household(body: HouseholdIn) -> Created:
        return Created(id=(await write(
            lambda t: t.add_household(body.id, body.community, body.name, now()))).id)

    @router.post("/metering-points", status_code=201, response_model=Created, dependencies=admin)
    async def add_point(body: PointIn) -> Created:
        return Created(id=(await write(lambda t: t.add_metering_point(
            body.id, body.utility, body.community, body.kind, now()))).id)

    @router.get("/metering-points/{point}/bindings", response_model=BindingsOut, dependencies=admin)
    async def bindings(point: Point) -> BindingsOut:
        """Every meter binding and occupancy of a metering point, oldest first."""
        assert state.reader is not None
        tables = PartyTables(state.reader)
        if await tables.metering_point(point) is None:
            raise ApiError(404, "not-found", f"no metering point {point}", "check the id")
        return BindingsOut(meters=[_binding(b) for b in await tables.meter_bindings(point)],
                           occupancies=[_binding(o) for o in await tables.occupancies(point)])

    @router.post("/metering-points/{point}/meters", status_code=201, response_model=BindingOut,
                 dependencies=admin)
    async def bind_meter(point: Point, body: MeterBindingIn) -> BindingOut:
        """Bind a meter (device, serial) to the metering point over [valid_from, valid_to)."""
        return _binding(await write(lambda t: t.bind_meter(
            point, body.device, body.meter, body.valid_from, body.valid_to, now())))

    @router.post("/metering-points/{point}/meters/end", response_model=BindingOut, dependencies=admin)
    async def end_meter(point: Point, body: EndIn) -> BindingOut:
        """End the open meter binding (a meter exchange: then bind the new meter from here)."""
        return _binding(await write(lambda t: t.end_meter_binding(point, body.valid_to)))

    @router.post("/metering-points/{point}/occupancies", status_code=201, response_model=BindingOut,
                 dependencies=admin)
    async def move_in(point: Point, body: OccupancyIn) -> BindingOut:
        """A household holds the metering point over [valid_from, valid_to) (a move-in)."""
        return _binding(await write(lambda t: t.add_occupancy(
            point, body.household, body.valid_from, body.valid_to, now())))

    @router.post("/metering-points/{point}/occupancies/end", response_model=BindingOut,
                 dependencies=admin)
    async def move_out(point: Point, body: EndIn) -> BindingOut:
        """End the open occupancy (a move-out)."""
        return _binding(await write(lambda t: t.end_occupancy(point, body.valid_to)))

    @router.post("/grants", status_code=201, response_model=Created, dependencies=admin)
    async def add_grant(body: GrantIn) -> Created:
        """An auditor grant over metering points and/or communities, until ``expires``."""
        return Created(id=(await write(lambda t: t.add_grant(
            body.id, body.label, body.expires, body.metering_points, body.communities, now()))).id)

    @router.post("/keys", status_code=201, response_model=NewKeyOut, dependencies=admin)
    async def create_key(body: KeyIn) -> KeyOut:
        """A new API key; its token is in this answer only."""
        key, token = await write(lambda t: t.create_key(
            body.kind, body.subject, body.label, body.expires, now()))
        return _key_out(key, token)

    @router.get("/keys", response_model=list[KeyOut], dependencies=admin)
    async def list_keys() -> list[KeyOut]:
        assert state.reader is not None
        return [_key_out(k) for k in await PartyTables(state.reader).keys()]

    def may_manage(who: Principal, key_id: str) -> None:
        if not who.is_admin and who.key_id != key_id:
            raise ApiError(404, "not-found", f"no key {key_id} visible to this key",
                           "a key may rotate or revoke only itself; admins any key")

    @router.post("/keys/{key_id}/rotate", status_code=201, response_model=NewKeyOut)
    async def rotate_key(who: Caller, key_id: KeyId, body: RotateIn) -> KeyOut:
        """A new key for the same subject; the old one stays valid until revoked or ``grace``
        seconds pass. Any key may rotate itself."""
        may_manage(who, key_id)
        key, token = await write(lambda t: t.rotate_key(key_id, body.grace, now()))
        return _key_out(key, token)

    @router.post("/keys/{key_id}/revoke", response_model=KeyOut)
    async def revoke_key(who: Caller, key_id: KeyId) -> KeyOut:
        """Revoke a key at once. Any key may revoke itself."""
        may_manage(who, key_id)
        return _key_out(await write(lambda t: t.revoke_key(key_id, now())))

    @router.get("/whoami", response_model=WhoAmI)
    async def whoami(who: Caller) -> WhoAmI:
        """The principal this bearer token resolves to."""
        return WhoAmI(kind=who.kind.value, id=who.id, key_id=who.key_id,
                      scopes=sorted(s.value for s in who.scopes))

    return router
