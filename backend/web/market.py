"""The household's market pages: the community's market (prices, volumes, counts, the price band,
its history and the grid price curve), its trading conditions with a preview, and ratings.

Each handler starts with ``ctx.household``; a household sees the market of its own community
only, and of the others only what ``backend/settlement/market.py`` aggregates.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.settlement.market import market_view
from meterchain.backend.web.charts import kwh
from meterchain.backend.web.context import PageError, WebContext
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
                          eur_kwh=eur_kwh, kwh=kwh, euros=euros, fmt_time=_fmt(zone))

    return r
