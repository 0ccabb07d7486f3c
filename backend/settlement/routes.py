"""HTTP routes of netting and settlement: a community's terms, dynamic prices and listings, its
settled intervals (aggregates, origin, tiers, digests and their log leaves), members' lines and
delta lines, and monthly bills.

Scope, decided here for every route from the caller's :class:`Principal`: the admin sees
everything; a utility its own communities; an auditor the communities (or metering points) of its
grant; a household only its own members' lines and bills, within its occupancies (a bill only if
the household held the metering point for the whole bill period). Out of scope answers 404, as
an unknown id does. Writes are admin-only, except that a household may post the listing of a
metering point it occupies.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local Annotated aliases.

import base64
import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from meterchain.backend.access.auth import Auth
from meterchain.backend.access.model import ID_PATTERN, KeyKind, PartyError, Principal
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.errors import CHECK_STATUS, ApiError, not_visible
from meterchain.backend.api.state import ApiState
from meterchain.backend.settlement.netting import Listing, NettingError, parse_price_csv
from meterchain.backend.settlement.runner import SettlementError, check_terms, schedule_rows
from meterchain.backend.settlement.tables import (
    OPEN_END,
    BillRow,
    SettlementRow,
    SettlementTables,
    Terms,
)
from meterchain.contract.reading import MAX_SAFE_INT
from pydantic import BaseModel, ConfigDict, Field

CommunityId = Annotated[str, Path(pattern=ID_PATTERN, description="Community id")]
MemberId = Annotated[str, Path(pattern=ID_PATTERN, description="Member (metering point) id")]
Time = Annotated[int, Field(ge=0, le=MAX_SAFE_INT, description="UTC seconds")]
Price = Annotated[int, Field(ge=-10_000_000, le=10_000_000, description="µ€/kWh")]
Fee = Annotated[int, Field(ge=0, le=10_000_000)]
TimeQuery = Annotated[int, Query(ge=0, le=MAX_SAFE_INT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TermsIn(_Strict):
    valid_from: Time
    interval_seconds: Annotated[int, Field(ge=60, le=86_400)] = 900
    deadline_seconds: Annotated[int, Field(ge=0, le=90 * 86_400)] = 86_400
    timezone: Annotated[str, Field(max_length=64)] = "Europe/Berlin"
    market: Annotated[str, Field(pattern="^(prorata|auction)$")] = "prorata"
    rule: Annotated[str, Field(pattern="^(mid_market|sdr|fixed)$")] = "mid_market"
    fixed_price: Price | None = None
    retail_price: Price | None = Field(default=None, description="p_g; null: imported prices")
    feed_in_price: Price | None = Field(default=None, description="p_f; null: imported prices")
    local_network_fee: Fee = 0
    grid_network_fee: Fee = 0
    platform_fee: Fee = 0
    monthly_fee: Annotated[int, Field(ge=0, le=10**12, description="µ€ per member and bill")] = 0
    vat_basis_points: Annotated[int, Field(ge=0, le=10_000)] = 0
    co2_grams_per_kwh: Annotated[int, Field(ge=0, le=10_000)] = 0


class TermsOut(TermsIn):
    community: str


class PricesIn(_Strict):
    kind: Annotated[str, Field(pattern="^(retail|feed_in)$")]
    csv: Annotated[str, Field(max_length=2_000_000, description="Rows start,price")]
    unit: Annotated[str, Field(pattern="^(EUR/MWh|EUR/kWh|ct/kWh|uEUR/kWh)$")] = "EUR/MWh"
    resolution_seconds: Annotated[int, Field(ge=60, le=86_400)] = 3600


class ListingIn(_Strict):
    member: Annotated[str, Field(pattern=ID_PATTERN)]
    valid_from: Time
    buy_limit: Price | None = None
    sell_ask: Price | None = None
    green_source: bool = False
    green_only: bool = False
    partner_group: Annotated[str, Field(pattern=ID_PATTERN)] | None = None


class ListingOut(ListingIn):
    id: int
    valid_to: int | None


class IntervalOut(BaseModel):
    interval_start: int
    interval_seconds: int
    revision: int
    reason: str = Field(description="complete, deadline or late-reading")
    settled_at: int
    digest: str = Field(description="hex SHA-256 of the settlement document")
    supersedes: str | None
    leaf_index: int | None = Field(description="The settlement leaf's index in the log (null "
                                   "until sealed)")
    # pylint: disable=duplicate-code  # the response schema spells out the stored row's fields
    mode: str
    rule: str
    retail_price: int
    feed_in_price: int
    members: int
    missing: int
    substituted: int
    demand_wh: int
    supply_wh: int
    local_wh: int
    grid_import_wh: int
    grid_export_wh: int
    self_sufficiency_ppm: int | None
    self_consumption_ppm: int | None
    co2_avoided_g: int
    # pylint: enable=duplicate-code


class IntervalDetailOut(IntervalOut):
    tiers: list[list[object]]
    origin: list[list[object]] = Field(description="[seller, export Wh]: the seller mix")
    leaf: str = Field(description="The settlement leaf, base64 CBOR")


class LineOut(BaseModel):
    interval_start: int
    revision: int
    member: str
    is_delta: bool = Field(description="true: a re-settlement's change (new − old)")
    quality: int | None
    import_wh: int
    export_wh: int
    bought_local_wh: int
    bought_grid_wh: int
    sold_local_wh: int
    sold_grid_wh: int
    local_energy_bought: int
    local_energy_sold: int
    grid_energy: int
    feed_in: int
    local_network_fee: int
    grid_network_fee: int
    platform_fee: int


class BillOut(BaseModel):
    community: str
    member: str
    period_start: int
    period_end: int
    version: int
    issued: int
    total: int
    baseline_total: int
    savings: int
    co2_avoided_g: int
    energy: dict[str, int]
    lines: list[dict[str, object]]


class ExclusionOut(BaseModel):
    member: str | None
    device: str
    seq: int
    reason: str
    detail: str
    time: int


def _interval(row: SettlementRow) -> dict[str, object]:
    return {
        "interval_start": row.interval_start, "interval_seconds": row.interval_seconds,
        "revision": row.revision, "reason": row.reason, "settled_at": row.settled_at,
        "digest": row.digest.hex(), "supersedes": row.supersedes.hex() if row.supersedes else None,
        "leaf_index": row.leaf_index, "mode": row.mode, "rule": row.rule,
        "retail_price": row.retail_price, "feed_in_price": row.feed_in_price,
        "members": row.members, "missing": row.missing, "substituted": row.substituted,
        "demand_wh": row.demand_wh, "supply_wh": row.supply_wh, "local_wh": row.local_wh,
        "grid_import_wh": row.grid_import_wh, "grid_export_wh": row.grid_export_wh,
        "self_sufficiency_ppm": row.self_sufficiency_ppm,
        "self_consumption_ppm": row.self_consumption_ppm, "co2_avoided_g": row.co2_avoided_g,
    }


def _bill(b: BillRow) -> BillOut:
    return BillOut(community=b.community, member=b.member, period_start=b.period_start,
                   period_end=b.period_end, version=b.version, issued=b.issued, total=b.total,
                   baseline_total=b.baseline_total, savings=b.savings,
                   co2_avoided_g=b.co2_avoided_g, energy=b.energy, lines=b.lines)


def settlement_router(state: "ApiState", auth: Auth) -> APIRouter:
    """Routes under /api/v1/communities/{community}/…, each scoped to the caller."""

    router = APIRouter(prefix="/api/v1/communities/{community}", tags=["settlement"])
    admin = [Depends(auth.require_admin)]
    Caller = Annotated[Principal, Depends(auth.require_reader)]

    def reader() -> SettlementTables:
        assert state.reader is not None
        return SettlementTables(state.reader)

    def not_found(what: str) -> ApiError:
        return not_visible(what, "check the id, or ask the operator for a key that covers it")

    async def community_visible(who: Principal, community: str) -> None:
        """Admin: all; utility: its communities; auditor: its grant's communities."""
        tables = reader()
        utility = await tables.community_utility(community)
        if utility is None:
            raise not_found(f"community {community}")
        if who.is_admin or (who.kind is KeyKind.UTILITY and utility == who.id):
            return
        if who.kind is KeyKind.AUDITOR and await tables.grant_covers(who.id, community):
            return
        raise not_found(f"community {community}")

    async def member_windows(who: Principal, community: str, member: str
                             ) -> list[tuple[int, int]]:
        """The caller's windows [from, to) on a member of a community; none: 404."""
        assert state.reader is not None
        parties = PartyTables(state.reader)
        point = await parties.metering_point(member)
        if point is None or point.community != community:
            raise not_found(f"member {member} of {community}")
        if who.kind is KeyKind.HOUSEHOLD:
            windows = [(o.valid_from, OPEN_END if o.valid_to is None else o.valid_to)
                       for o in await parties.occupancies(member) if o.household == who.id]
        elif await parties.point_visible(who, member):
            windows = [(0, OPEN_END)]
        else:
            windows = []
        if not windows:
            raise not_found(f"member {member} of {community}")
        return windows

    async def write(action):  # an untyped helper: its callers' lambdas return several types
        assert state.writer is not None
        try:
            async with state.write_lock:
                return await action(SettlementTables(state.writer))
        except (PartyError, NettingError, SettlementError) as exc:
            raise ApiError(CHECK_STATUS.get(exc.check, 400), exc.check, exc.diagnostics(),
                           "fix the request; docs/netting.md explains each field") from None

    @router.get("/terms", response_model=list[TermsOut])
    async def get_terms(community: CommunityId, who: Caller) -> list[TermsOut]:
        """Every version of the community's netting terms, oldest first."""
        await community_visible(who, community)
        return [TermsOut.model_validate(t.as_dict()) for t in await reader().terms(community)]

    @router.put("/terms", response_model=TermsOut, dependencies=admin)
    async def put_terms(community: CommunityId, body: TermsIn) -> TermsOut:
        """Terms from ``valid_from`` on (prices, fees, VAT, rule, market, deadline)."""
        terms = Terms(community, **body.model_dump())
        saved = await write(lambda t: t.set_terms(check_terms(terms), int(time.time())))
        return TermsOut(**saved.as_dict())

    @router.post("/prices", status_code=201, dependencies=admin)
    async def post_prices(community: CommunityId, body: PricesIn) -> dict[str, int]:
        """Import dynamic prices (hourly tariff, day-ahead) as CSV rows start,price."""

        async def action(tables: SettlementTables) -> int:
            versions = await tables.terms(community)
            seconds = versions[0].interval_seconds if versions else 900
            schedule = parse_price_csv(body.csv, unit=body.unit, interval_seconds=seconds,
                                       resolution_seconds=body.resolution_seconds)
            return await tables.add_prices(community, body.kind, schedule_rows(schedule),
                                           int(time.time()))

        return {"rows": await write(action)}

    @router.get("/listings", response_model=list[ListingOut])
    async def get_listings(community: CommunityId, who: Caller,
                           at: TimeQuery | None = None) -> list[ListingOut]:
        """Standing orders (all, or those in force at ``at``)."""
        await community_visible(who, community)
        return [ListingOut(id=x.id, member=x.member, valid_from=x.valid_from, valid_to=x.valid_to,
                           buy_limit=x.buy_limit, sell_ask=x.sell_ask,
                           green_source=x.green_source, green_only=x.green_only,
                           partner_group=x.partner_group)
                for x in await reader().listings(community, at)]

    @router.post("/listings", status_code=201, response_model=ListingOut)
    async def post_listing(community: CommunityId, body: ListingIn, who: Caller) -> ListingOut:
        """Post a member's standing order (the admin, or the household occupying the member)."""
        if not who.is_admin:
            windows = await member_windows(who, community, body.member)
            if who.kind is not KeyKind.HOUSEHOLD or not any(
                    f <= body.valid_from < t for f, t in windows):
                raise ApiError(403, "forbidden", "only the admin or the household occupying the "
                               "member at valid_from may post its listing", "use such a key")
        try:
            Listing(body.member, body.buy_limit, body.sell_ask, body.green_source,
                    body.green_only, body.partner_group)
        except NettingError as exc:
            raise ApiError(400, exc.check, exc.diagnostics(), "fix the listing") from None
        row = await write(lambda t: t.post_listing(
            community, body.member, body.valid_from, body.buy_limit, body.sell_ask,
            body.green_source, body.green_only, body.partner_group, int(time.time())))
        return ListingOut(id=row.id, valid_to=row.valid_to, **body.model_dump())

    @router.get("/intervals", response_model=list[IntervalOut])
    async def intervals(community: CommunityId, who: Caller, start: TimeQuery = 0,
                        end: TimeQuery = MAX_SAFE_INT,
                        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[IntervalOut]:
        """Settled intervals starting in [start, end), the revision in force of each."""
        await community_visible(who, community)
        rows = await reader().in_force(community, start, end)
        return [IntervalOut.model_validate(_interval(r)) for _, r in sorted(rows.items())[:limit]]

    @router.get("/intervals/{interval_start}", response_model=list[IntervalDetailOut])
    async def interval(community: CommunityId, who: Caller,
                       interval_start: Annotated[int, Path(ge=0, le=MAX_SAFE_INT)]
                       ) -> list[IntervalDetailOut]:
        """Every revision of one interval, oldest first, with tiers, origin and its leaf."""
        await community_visible(who, community)
        tables = reader()
        rows = await tables.revisions(community, interval_start, interval_start + 1)
        if not rows:
            raise not_found(f"settled interval {interval_start} of {community}")
        out = []
        for row in rows:
            data, _, _ = await tables.leaf_data(row.leaf_id)
            origin = await tables.origin(community, interval_start, row.revision)
            out.append(IntervalDetailOut.model_validate({
                **_interval(row), "tiers": json.loads(row.tiers),
                "origin": [list(o) for o in origin], "leaf": base64.b64encode(data).decode()}))
        return out

    @router.get("/members/{member}/lines", response_model=list[LineOut])
    async def lines(community: CommunityId, member: MemberId, who: Caller, start: TimeQuery = 0,
                    end: TimeQuery = MAX_SAFE_INT,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 2000) -> list[LineOut]:
        """The member's lines (revision 0) and delta lines (later revisions), oldest first."""
        windows = await member_windows(who, community, member)
        out = []
        for f, t in windows:
            for s, rev, line in await reader().lines(community, max(start, f), min(end, t),
                                                     member, limit):
                out.append(LineOut.model_validate({"interval_start": s, "revision": rev, **line,
                                                   "is_delta": bool(line["is_delta"])}))
        return sorted(out, key=lambda x: (x.interval_start, x.revision))[:limit]

    @router.get("/members/{member}/bills", response_model=list[BillOut])
    async def member_bills(community: CommunityId, member: MemberId, who: Caller) -> list[BillOut]:
        """The member's monthly bills (newest version of each)."""
        windows = await member_windows(who, community, member)
        return [_bill(b) for b in await reader().bills(community, member)
                if any(f <= b.period_start and b.period_end <= t for f, t in windows)]

    @router.get("/bills", response_model=list[BillOut])
    async def bills(community: CommunityId, who: Caller,
                    period_start: TimeQuery | None = None) -> list[BillOut]:
        """Every member's bills of the community (newest versions), by period and member."""
        await community_visible(who, community)
        return [_bill(b) for b in await reader().bills(community, None, period_start)]

    @router.get("/exclusions", response_model=list[ExclusionOut])
    async def exclusions(community: CommunityId, who: Caller) -> list[ExclusionOut]:
        """Readings the settlement could not use, and why (never used, always reported)."""
        await community_visible(who, community)
        return [ExclusionOut(member=x.member, device=x.device, seq=x.seq, reason=x.reason,
                             detail=x.detail, time=x.time)
                for x in await reader().exclusions(community)]

    return router
