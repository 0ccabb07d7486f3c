"""The household's market pages: the community's market (prices, volumes, counts, the price band,
its history and the grid price curve), its trading conditions with a preview, and ratings.

Each handler starts with ``ctx.household``; a household sees the market of its own community
only, and of the others only what ``backend/settlement/market.py`` aggregates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from meterchain.backend.access.model import UnknownParty
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.settlement import ratings
from meterchain.backend.settlement.conditions import (
    Conditions,
    ConditionsError,
    ConditionsTables,
    conditions_state,
    parse_price,
    preview_rows,
    run_preview,
)
from meterchain.backend.settlement.market import band_now, market_view
from meterchain.backend.settlement.netting import NettingError
from meterchain.backend.settlement.ratings import RatingTables
from meterchain.backend.web.charts import kwh
from meterchain.backend.web.context import PageError, WebContext, read_form
from meterchain.backend.web.market_charts import eur_kwh, grid_curve, price_history
from meterchain.backend.web.pages import _fmt, euros
from meterchain.backend.web.tables import WebTables


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/households/{household}", include_in_schema=False)

    async def household_of(household: str) -> tuple[str, str]:
        found = await PartyTables(ctx.store).household(household)
        if found is None:
            raise PageError(404, "There is no such page.")
        return found.name, found.community

    @r.get("/market", response_class=HTMLResponse)
    async def market(request: Request, household: str) -> HTMLResponse:
        session, _ = await ctx.household(request, household)
        name, community = await household_of(household)
        zone = await WebTables(ctx.store).timezone(household)
        now = ctx.now()
        view = await market_view(ctx.store, community, now, zone)
        history = price_history(view.history, f"Local price per day, last {len(view.history)} "
                                "days, within the band from feed-in tariff to grid price")
        curve = None
        if view.dynamic:
            tz = ZoneInfo(zone)
            today = dt.datetime.fromtimestamp(now, tz).date()
            start = int(dt.datetime.combine(today, dt.time(), tz).timestamp())
            end = int(dt.datetime.combine(today + dt.timedelta(days=2), dt.time(), tz).timestamp())
            curve = grid_curve(view.curve, start, end, now, zone,
                               "Grid price and feed-in tariff, today and tomorrow")
        return ctx.render(request, "market.html", household=household, household_name=name,
                          username=session.username, view=view, history=history, curve=curve,
                          rated=await ratings.community_aggregates(ctx.store, community),
                          min_raters=ratings.MIN_RATERS,
                          eur_kwh=eur_kwh, kwh=kwh, euros=euros, fmt_time=_fmt(zone))

    async def ratings_page(request: Request, household: str, status: int = 200,
                           **values: object) -> HTMLResponse:
        session, _ = await ctx.household(request, household)
        name, _ = await household_of(household)
        zone = await WebTables(ctx.store).timezone(household)
        tables = RatingTables(ctx.store)
        display, show = await tables.profile(household)
        mine = (await tables.aggregates([household])).get(household)
        return ctx.render(request, "ratings.html", status, household=household,
                          household_name=name, username=session.username,
                          partners=await ratings.partners(ctx.store, household, ctx.now(), zone),
                          display_name=display or "", show_name=show, mine=mine,
                          min_raters=ratings.MIN_RATERS, fmt_time=_fmt(zone), **values)

    @r.get("/ratings", response_class=HTMLResponse)
    async def ratings_view(request: Request, household: str) -> HTMLResponse:
        return await ratings_page(request, household)

    @r.post("/ratings", response_class=HTMLResponse)
    async def rate(request: Request, household: str) -> HTMLResponse:
        await ctx.household(request, household)
        form = await read_form(request)
        zone = await WebTables(ctx.store).timezone(household)
        try:
            stars = int(form.get("stars", ""))
        except ValueError:
            return await ratings_page(request, household, 400, error="Choose 1 to 5 stars.")
        assert ctx.api.writer is not None
        try:
            async with ctx.api.write_lock:
                rated = await ratings.rate(ctx.store, ctx.api.writer, household,
                                           form.get("partner", ""), stars, form.get("comment"),
                                           ctx.now(), zone)
        except UnknownParty:
            raise PageError(404, "There is no such trading partner.") from None
        except ratings.RatingError as exc:
            return await ratings_page(request, household, 400, error=str(exc))
        return await ratings_page(request, household, rated=rated.handle)

    @r.post("/profile", response_class=HTMLResponse)
    async def profile(request: Request, household: str) -> HTMLResponse:
        await ctx.household(request, household)
        form = await read_form(request)
        assert ctx.api.writer is not None
        try:
            async with ctx.api.write_lock:
                await RatingTables(ctx.api.writer).set_profile(
                    household, form.get("display_name") or None, form.get("show_name") == "on")
        except ratings.RatingError as exc:
            return await ratings_page(request, household, 400, error=str(exc))
        return await ratings_page(request, household, profile_saved=True)

    async def my_points(household: str, community: str) -> list[str]:
        """The household's metering points in its community, occupied now."""
        now, parties = ctx.now(), PartyTables(ctx.store)
        points = []
        for occ in await parties.occupancies():
            if occ.household == household and occ.valid_from <= now and (
                    occ.valid_to is None or now < occ.valid_to):
                point = await parties.metering_point(occ.metering_point)
                if point is not None and point.community == community:
                    points.append(point.id)
        return sorted(set(points))

    async def conditions_page(request: Request, household: str, status: int = 200,
                              **values: object) -> HTMLResponse:
        session, _ = await ctx.household(request, household)
        name, community = await household_of(household)
        zone = await WebTables(ctx.store).timezone(household)
        now = ctx.now()
        states = []
        for point in await my_points(household, community):
            try:
                states.append(await conditions_state(ctx.store, community, point, now))
            except UnknownParty:
                continue  # no terms yet
        return ctx.render(request, "conditions.html", status, household=household,
                          household_name=name, username=session.username, states=states,
                          band=await band_now(ctx.store, community, now), eur_kwh=eur_kwh,
                          kwh=kwh, euros=euros, fmt_time=_fmt(zone), price_text=_price_text,
                          **values)

    @r.get("/conditions", response_class=HTMLResponse)
    async def conditions(request: Request, household: str) -> HTMLResponse:
        return await conditions_page(request, household)

    @r.post("/conditions", response_class=HTMLResponse)
    async def save_conditions(request: Request, household: str) -> HTMLResponse:
        await ctx.household(request, household)
        _, community = await household_of(household)
        form = await read_form(request)
        point = form.get("point", "")
        if point not in await my_points(household, community):
            raise PageError(404, "There is no such page.")
        entered = {k: form.get(k, "") for k in ("sell_ask", "buy_limit", "partner_group")}
        try:
            chosen = Conditions(parse_price(entered["sell_ask"], "The sell ask"),
                                parse_price(entered["buy_limit"], "The buy limit"),
                                form.get("green_source") == "on", form.get("green_only") == "on",
                                entered["partner_group"].strip() or None)
            chosen.listing(point)
        except (ConditionsError, NettingError) as exc:
            return await conditions_page(request, household, 400, error=str(exc), point=point,
                                         entered=entered)
        now = ctx.now()
        if form.get("action") == "save":
            state = await conditions_state(ctx.store, community, point, now)
            assert ctx.api.writer is not None
            async with ctx.api.write_lock:
                saved = await ConditionsTables(ctx.api.writer).replace_pending(
                    community, point, state.effective_from, chosen, now)
            return await conditions_page(request, household, point=point, saved=saved)
        start, end, rows = await preview_rows(ctx.store, community, now)
        preview = await asyncio.to_thread(run_preview, rows, point, chosen, start, end)
        return await conditions_page(request, household, point=point, entered=entered,
                                     chosen=chosen, preview=preview)

    return r


def _price_text(micro: int | None) -> str:
    """µ€/kWh as the form shows it (€/kWh, up to six decimals, no trailing zeros)."""
    if micro is None:
        return ""
    whole, fraction = divmod(abs(micro), 1_000_000)
    return ("-" if micro < 0 else "") + f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")
