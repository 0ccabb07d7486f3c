"""The households' trading API for apps (household keys), under /api/v1/households/{household}/:
wallet and statements, payments (admin), the community's market, trading conditions per metering
point with a preview, and ratings of trading partners.

Every route decides first who may act: the household's own key (subject == household) or the
admin; anyone else gets the 404 an unknown household gets (docs/privacy.md). Routes naming a
metering point also check that the household occupies it (now, for writes). What a household
sees of others is aggregated only (``backend/settlement/market.py``).
"""

# No `from __future__ import annotations`: FastAPI must resolve the local Annotated aliases.

import asyncio
import re
import time
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from meterchain.backend.access.auth import Auth
from meterchain.backend.access.model import ID_PATTERN, KeyKind, PartyError, Principal
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.errors import ApiError, not_visible
from meterchain.backend.api.state import ApiState
from meterchain.backend.settlement import household as money
from meterchain.backend.settlement import ratings
from meterchain.backend.settlement.conditions import (
    Conditions,
    ConditionsState,
    ConditionsTables,
    conditions_state,
    preview_rows,
    run_preview,
)
from meterchain.backend.settlement.market import band_now, market_view
from meterchain.backend.settlement.netting import NettingError
from meterchain.backend.settlement.ratings import Aggregate, Partner
from meterchain.backend.settlement.wallet import MAX_PAYMENT, WalletError, WalletTables, posting_json
from meterchain.contract.reading import MAX_SAFE_INT
from pydantic import BaseModel, ConfigDict, Field

HouseholdId = Annotated[str, Path(pattern=ID_PATTERN, description="Household id")]
PointId = Annotated[str, Path(pattern=ID_PATTERN, description="Metering point id")]
TimeQuery = Annotated[int, Query(ge=0, le=MAX_SAFE_INT)]
MONTH = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PostingOut(BaseModel):
    id: int
    source: str = Field(description="interval, delta, rounding, bill, payment or refund")
    line: str = Field(description="money kind, monthly_fee, vat, payment or refund")
    member: str | None = Field(description="the metering point of a settlement line")
    interval_start: int | None
    revision: int | None = Field(description="settlement revision, or bill version")
    digest: str | None = Field(description="hex settlement digest (bills: the bill's basis)")
    leaf_index: int | None = Field(description="the settlement leaf's index in the log")
    energy_wh: int | None
    amount: int = Field(description="µ€: + a credit to the household, − a debit")
    reference: str | None
    time: int


class ProvisionalOut(BaseModel):
    amount: int = Field(description="µ€, an estimate that is never posted")
    intervals: int
    import_wh: int
    export_wh: int
    missing: int
    open_months: int
    since: int | None


class WalletOut(BaseModel):
    household: str
    community: str
    balance: int = Field(description="µ€: the sum of every posting")
    provisional: ProvisionalOut
    postings: list[PostingOut]


class EarningOut(BaseModel):
    key: str = Field(description="local day YYYY-MM-DD or month YYYY-MM")
    local_wh: int
    local_amount: int = Field(description="µ€ for energy sold to neighbours")
    grid_wh: int
    grid_amount: int = Field(description="µ€ feed-in")
    amount: int


class PaymentIn(_Strict):
    kind: Annotated[str, Field(pattern="^(payment|refund)$")] = "payment"
    amount: Annotated[int, Field(ge=1, le=MAX_PAYMENT, description="µ€, positive")]
    reference: Annotated[str, Field(max_length=200)] | None = None


class TierOut(BaseModel):
    name: str
    price: int = Field(description="µ€/kWh")
    volume_wh: int
    buyers: int = Field(description="matched buyers (pro-rata: importing members)")
    sellers: int = Field(description="matched sellers (pro-rata: exporting members)")


class MarketIntervalOut(BaseModel):
    # pylint: disable=duplicate-code  # the response schema spells out the record's fields (scripts/check: duplicates)
    start: int
    revision: int
    mode: str
    retail: int
    feed_in: int
    importing: int
    exporting: int
    local_wh: int
    tiers: list[TierOut]
    # pylint: enable=duplicate-code
    digest: str


class MarketDayOut(BaseModel):
    day: str = Field(description="local date")
    start: int
    local_wh: int
    mean_price: int | None = Field(description="volume-weighted local price, µ€/kWh")
    low: int | None
    high: int | None
    retail: int
    feed_in: int
    intervals: int


class MarketOut(BaseModel):
    community: str
    market: str | None = Field(description="prorata or auction; null without terms")
    band: list[int] | None = Field(description="[p_f, p_g] in force now, µ€/kWh")
    dynamic: bool
    recent: list[MarketIntervalOut]
    history: list[MarketDayOut]
    curve: list[list[object]] = Field(description="[kind, start, end, price]: grid prices "
                                      "today and tomorrow (dynamic tariffs)")


Price = Annotated[int, Field(ge=-10_000_000, le=10_000_000, description="µ€/kWh")]


class ConditionsIn(_Strict):
    sell_ask: Price | None = Field(default=None, description="null: sell at any price ≥ p_f")
    buy_limit: Price | None = Field(default=None, description="null: buy at any price ≤ p_g")
    green_source: bool = False
    green_only: bool = False
    partner_group: Annotated[str, Field(pattern=ID_PATTERN)] | None = None

    def conditions(self) -> Conditions:
        return Conditions(self.sell_ask, self.buy_limit, self.green_source, self.green_only,
                          self.partner_group)


class ConditionsOut(BaseModel):
    member: str
    market: str = Field(description="prorata (listings have no effect) or auction")
    in_force: ConditionsIn
    pending_from: int | None = Field(description="a saved change not in force yet starts here")
    pending: ConditionsIn | None
    effective_from: int = Field(description="a change saved now governs intervals from here")
    band: list[int] | None = Field(description="[p_f, p_g] now, µ€/kWh")


class SavedOut(BaseModel):
    member: str
    valid_from: int = Field(description="the first interval these conditions govern")
    conditions: ConditionsIn


class PreviewOut(BaseModel):
    # pylint: disable=duplicate-code  # the response schema spells out the record's fields (scripts/check: duplicates)
    start: int
    end: int
    intervals: int
    export_wh: int
    import_wh: int
    sold_local_wh: int
    sold_local: int = Field(description="µ€ received for it")
    feed_in_value: int = Field(description="µ€ the energy sold locally earns at p_f")
    bought_local_wh: int
    bought_local: int
    grid_value: int
    settled_sold_local_wh: int
    settled_sold_local: int
    settled_bought_local_wh: int
    settled_bought_local: int
    # pylint: enable=duplicate-code


class AggregateOut(BaseModel):
    raters: int = Field(description="households whose newest rating counts (≥ 5)")
    mean: str = Field(description="mean stars, one decimal")


class PartnerOut(BaseModel):
    handle: str = Field(description="stable for this household, meaningless to others")
    label: str = Field(description="the partner's display name if it opted in, else "
                       "'a neighbour'")
    bought_from: int
    sold_to: int
    last: int
    stars: int | None = Field(description="this household's rating of it this month")
    comment: str | None
    aggregate: AggregateOut | None


class RatingIn(_Strict):
    stars: Annotated[int, Field(ge=1, le=5)]
    comment: Annotated[str, Field(max_length=280)] | None = None


class ProfileIn(_Strict):
    display_name: Annotated[str, Field(min_length=1, max_length=40)] | None = None
    show_name: bool = False


class RatingsOut(BaseModel):
    mine: AggregateOut | None = Field(description="how others rated this household (≥ 5)")
    community: list[list[object]] = Field(description="[label, raters, mean] of the "
                                          "community's households rated by ≥ 5 households")


def _aggregate(a: Aggregate | None) -> AggregateOut | None:
    return None if a is None else AggregateOut(raters=a.raters, mean=a.mean)


def _partner(p: Partner) -> PartnerOut:
    return PartnerOut(handle=p.handle, label=p.label, bought_from=p.bought_from,
                      sold_to=p.sold_to, last=p.last, stars=p.stars, comment=p.comment,
                      aggregate=_aggregate(p.aggregate))


def _conditions_in(c: Conditions) -> ConditionsIn:
    return ConditionsIn(sell_ask=c.sell_ask, buy_limit=c.buy_limit, green_source=c.green_source,
                        green_only=c.green_only, partner_group=c.partner_group)


def _now(request: Request) -> int:
    """The households' clock: the dashboard's (``WebContext.clock``), so an app and the pages
    price the same open intervals; the system clock without a dashboard."""
    web = getattr(request.app.state, "web", None)
    return int(web.clock()) if web is not None else int(time.time())


def household_router(state: ApiState, auth: Auth) -> APIRouter:
    router = APIRouter(prefix="/api/v1/households/{household}", tags=["households' trading"])
    Caller = Annotated[Principal, Depends(auth.require_reader)]
    admin = [Depends(auth.require_admin)]

    async def may_act(who: Principal, household: str) -> None:
        """The household's own key or the admin; else the 404 of an unknown household."""
        found = await PartyTables(state.read()).household(household)
        if found is None or not (who.is_admin or (who.kind is KeyKind.HOUSEHOLD
                                                  and who.id == household)):
            raise not_visible(f"household {household}", "use the household's own key")

    @router.get("/wallet", response_model=WalletOut)
    async def wallet(request: Request, household: HouseholdId, who: Caller, start: TimeQuery = 0,
                     end: TimeQuery = MAX_SAFE_INT,
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> WalletOut:
        """Balance (Σ postings), the provisional estimate, and the newest postings in [start, end)."""
        await may_act(who, household)
        view = await money.wallet_view(state.read(), household, _now(request), start, end,
                                       limit)
        p = view.provisional
        return WalletOut(household=household, community=view.community, balance=view.balance,
                         provisional=ProvisionalOut(
                             amount=p.amount, intervals=p.intervals, import_wh=p.import_wh,
                             export_wh=p.export_wh, missing=p.missing,
                             open_months=p.open_months, since=p.since),
                         postings=[PostingOut.model_validate(posting_json(x)) for x in view.postings])

    @router.get("/wallet/earnings", response_model=list[EarningOut])
    async def earnings(household: HouseholdId, who: Caller,
                       by: Annotated[str, Query(pattern="^(day|month)$")] = "day",
                       start: TimeQuery = 0, end: TimeQuery = MAX_SAFE_INT) -> list[EarningOut]:
        """Earnings from sold energy (locally and feed-in) per local day or month in [start, end)."""
        await may_act(who, household)
        store = state.read()
        found = await money.earnings(store, household, start, end,
                                     await money.household_timezone(store, household), by)
        return [EarningOut(key=e.key, local_wh=e.local_wh, local_amount=e.local_amount,
                           grid_wh=e.grid_wh, grid_amount=e.grid_amount, amount=e.amount)
                for e in found]

    @router.get("/wallet/statement", response_class=Response,
                responses={200: {"content": {"text/csv": {}}}})
    async def statement(household: HouseholdId, who: Caller,
                        month: Annotated[str, Query(pattern=MONTH)]) -> Response:
        """A month's statement (household's time zone) as CSV: every posting with its settlement
        digest, log leaf index, running balance and the ``settle --verify`` command."""
        await may_act(who, household)
        store = state.read()
        zone = await money.household_timezone(store, household)
        try:
            start, end = money.month_bounds(month, zone)
        except (ValueError, OverflowError):
            raise ApiError(400, "invalid", f"no month {month}", "YYYY-MM, a year from 1970 on"
                           ) from None
        postings = await WalletTables(store).postings("household", household, start, end)
        text = money.statement_csv(await money.household_community(store, household) or "",
                                   postings, zone,
                                   await money.opening_balance(store, household, start))
        return Response(text, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{household}-statement-{month}.csv"'})

    @router.post("/wallet/payments", status_code=201, response_model=PostingOut,
                 dependencies=admin)
    async def payment(request: Request, household: HouseholdId, body: PaymentIn, who: Caller
                      ) -> PostingOut:
        """Record a payment the household made (a credit) or a refund paid to it (a debit)."""
        assert state.writer is not None
        if body.reference is not None and not re.fullmatch(r"[^\x00-\x1f\x7f]*", body.reference):
            raise ApiError(400, "invalid", "reference has control characters", "plain text only")
        try:
            async with state.write_lock:
                posting = await WalletTables(state.writer).record_payment(
                    household, body.kind, body.amount, body.reference, who.key_id or "admin",
                    _now(request))
        except PartyError as exc:
            raise not_visible(f"household {household}") from exc
        except WalletError as exc:
            raise ApiError(400, exc.check, exc.diagnostics(), "amount in µ€, 1 … 10^12") from None
        return PostingOut.model_validate(posting_json(posting))

    async def occupied_point(household: str, point: str, now: int) -> str:
        """The household's community if it occupies ``point`` now; else the 404 of an unknown
        point (a household acts only for what it occupies)."""
        parties = PartyTables(state.read())
        found = await parties.metering_point(point)
        home = await parties.household(household)
        if found is None or home is None or found.community != home.community or not any(
                o.household == household and o.valid_from <= now
                and (o.valid_to is None or now < o.valid_to)
                for o in await parties.occupancies(point)):
            raise not_visible(f"metering point {point} of household {household}",
                              "use a metering point the household occupies now")
        return home.community

    @router.get("/points/{point}/conditions", response_model=ConditionsOut)
    async def get_conditions(request: Request, household: HouseholdId, point: PointId,
                             who: Caller) -> ConditionsOut:
        """The trading conditions in force, a pending change, and when a change takes effect."""
        await may_act(who, household)
        now = _now(request)
        community = await occupied_point(household, point, now)
        st = await _state(community, point, now)
        band = await band_now(state.read(), community, now)
        return ConditionsOut(
            member=point, market=st.market, in_force=_conditions_in(st.in_force),
            pending_from=st.pending.valid_from if st.pending else None,
            pending=_conditions_in(Conditions.of(st.pending)) if st.pending else None,
            effective_from=st.effective_from, band=list(band) if band else None)

    @router.put("/points/{point}/conditions", response_model=SavedOut)
    async def put_conditions(request: Request, household: HouseholdId, point: PointId,
                             body: ConditionsIn, who: Caller) -> SavedOut:
        """Save conditions; they govern intervals from ``valid_from`` (never a settled one)."""
        await may_act(who, household)
        now = _now(request)
        community = await occupied_point(household, point, now)
        st = await _state(community, point, now)
        assert state.writer is not None
        try:
            body.conditions().listing(point)
            async with state.write_lock:
                saved = await ConditionsTables(state.writer).replace_pending(
                    community, point, st.effective_from, body.conditions(), now)
        except (NettingError, PartyError) as exc:
            raise ApiError(400, exc.check, exc.diagnostics(), "fix the conditions") from None
        return SavedOut(member=point, valid_from=saved.valid_from, conditions=body)

    @router.post("/points/{point}/conditions/preview", response_model=PreviewOut)
    async def preview(request: Request, household: HouseholdId, point: PointId,
                      body: ConditionsIn, who: Caller) -> PreviewOut:
        """Last week's settled intervals re-run with these conditions; nothing is stored."""
        await may_act(who, household)
        now = _now(request)
        community = await occupied_point(household, point, now)
        start, end, rows = await preview_rows(state.read(), community, now)
        try:
            body.conditions().listing(point)
            result = await asyncio.to_thread(run_preview, rows, point, body.conditions(), start,
                                             end)
        except NettingError as exc:
            raise ApiError(400, exc.check, exc.diagnostics(), "fix the conditions") from None
        return PreviewOut(**asdict(result))

    async def _state(community: str, point: str, now: int) -> ConditionsState:
        try:
            return await conditions_state(state.read(), community, point, now)
        except PartyError as exc:
            raise not_visible(f"netting terms of {community}") from exc

    @router.get("/partners", response_model=list[PartnerOut])
    async def get_partners(request: Request, household: HouseholdId, who: Caller
                           ) -> list[PartnerOut]:
        """The households this one traded with in the last 30 days, to rate (pseudonymous)."""
        await may_act(who, household)
        store = state.read()
        found = await ratings.partners(store, household, _now(request),
                                       await money.household_timezone(store, household))
        return [_partner(p) for p in found]

    @router.put("/ratings/{handle}", response_model=PartnerOut)
    async def put_rating(request: Request, household: HouseholdId,
                         handle: Annotated[str, Path(pattern="^[0-9a-f]{12}$")], body: RatingIn,
                         who: Caller) -> PartnerOut:
        """Rate a partner of the last 30 days for this month (replaces this month's rating)."""
        await may_act(who, household)
        if who.kind is not KeyKind.HOUSEHOLD:
            raise ApiError(403, "forbidden", "only the household itself rates its partners",
                           "use the household's own key")
        store = state.read()
        assert state.writer is not None
        try:
            async with state.write_lock:
                rated = await ratings.rate(store, state.writer, household, handle, body.stars,
                                           body.comment, _now(request),
                                           await money.household_timezone(store, household))
        except PartyError as exc:
            raise not_visible(f"trading partner {handle}",
                              "GET …/partners lists the partners of the last 30 days") from exc
        except ratings.RatingError as exc:
            raise ApiError(400, exc.check, exc.diagnostics(), "1 to 5 stars, a short comment"
                           ) from None
        return _partner(rated)

    @router.get("/ratings", response_model=RatingsOut)
    async def get_ratings(household: HouseholdId, who: Caller) -> RatingsOut:
        """Aggregates only: this household's, and those of its community's rated households."""
        await may_act(who, household)
        store = state.read()
        tables = ratings.RatingTables(store)
        community = await money.household_community(store, household) or ""
        return RatingsOut(
            mine=_aggregate((await tables.aggregates([household])).get(household)),
            community=[[label, a.raters, a.mean]
                       for label, a in await ratings.community_aggregates(store, community)])

    @router.put("/profile", status_code=204, response_class=Response)
    async def put_profile(household: HouseholdId, body: ProfileIn, who: Caller) -> Response:
        """The household's display name and whether neighbours see it (opt-in)."""
        await may_act(who, household)
        assert state.writer is not None
        try:
            async with state.write_lock:
                await ratings.RatingTables(state.writer).set_profile(
                    household, body.display_name, body.show_name)
        except ratings.RatingError as exc:
            raise ApiError(400, exc.check, exc.diagnostics(), "a short printable name") from None
        return Response(status_code=204)

    @router.get("/market", response_model=MarketOut)
    async def market(request: Request, household: HouseholdId, who: Caller) -> MarketOut:
        """The household's community market: aggregates only (prices, volumes, counts)."""
        await may_act(who, household)
        store = state.read()
        community = await money.household_community(store, household) or ""
        view = await market_view(store, community, _now(request),
                                 await money.household_timezone(store, household))
        return MarketOut(
            community=community, market=view.terms.market if view.terms else None,
            band=list(view.band) if view.band else None, dynamic=view.dynamic,
            recent=[MarketIntervalOut(**{**asdict(iv), "tiers": [TierOut(**asdict(t))
                                                                for t in iv.tiers]})
                    for iv in view.recent],
            history=[MarketDayOut(**asdict(d)) for d in view.history],
            curve=[list(c) for c in view.curve])

    return router
