"""The household's wallet pages: balance, provisional figure, postings, statements, earnings.

Every handler starts with ``ctx.household`` (its own household, else 404 or the sign-in page);
the numbers come from ``backend/settlement/household.py``, the same functions the apps' API
serves, over the postings the settlement runner wrote (``backend/settlement/wallet.py``).
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.settlement import household as money
from meterchain.backend.settlement.tables import SettlementTables
from meterchain.backend.settlement.wallet import WalletTables
from meterchain.backend.web import series
from meterchain.backend.web.charts import kwh
from meterchain.backend.web.context import PageError, WebContext
from meterchain.backend.web.pages import _download, _fmt, euros
from meterchain.backend.web.tables import WebTables


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/households/{household}/wallet", include_in_schema=False)

    async def name_of(household: str) -> str:
        found = await PartyTables(ctx.store).household(household)
        return found.name if found else household

    @r.get("", response_class=HTMLResponse)
    async def wallet(request: Request, household: str) -> HTMLResponse:
        session, _ = await ctx.household(request, household)
        zone = await WebTables(ctx.store).timezone(household)
        now = ctx.now()
        view = await money.wallet_view(ctx.store, household, now, limit=40)
        today = series.today(now, zone)
        month = series.period("month", today, zone)
        year_start = series.parse_period("month", f"{today.year - 1}-{today.month:02d}", zone)
        days = await money.earnings(ctx.store, household, month.start, month.end, zone, "day")
        months = await money.earnings(ctx.store, household, year_start.start, month.end, zone,
                                      "month")
        versions = await SettlementTables(ctx.store).terms(view.community) if view.community else []
        return ctx.render(
            request, "wallet.html", household=household, household_name=await name_of(household),
            username=session.username, view=view, euros=euros, kwh=kwh, fmt_time=_fmt(zone),
            groups=list(reversed(money.statement_groups(view.postings))), labels=money.LINE_LABELS,
            days=days, months=months, month=month, has_terms=bool(versions),
            statement_months=_recent_months(today, 3))

    @r.get("/statement/{month}")
    async def statement(request: Request, household: str, month: str) -> Response:
        session, _ = await ctx.household(request, household)
        zone = await WebTables(ctx.store).timezone(household)
        as_csv = month.endswith(".csv")
        key = month.removesuffix(".csv")
        try:
            start, end = money.month_bounds(key, zone)
        except (ValueError, OverflowError):
            raise PageError(404, "There is no such month.") from None
        community = await money.household_community(ctx.store, household) or ""
        postings = await WalletTables(ctx.store).postings("household", household, start, end)
        opening = await money.opening_balance(ctx.store, household, start)
        if as_csv:
            return _download(money.statement_csv(community, postings, zone, opening),
                             f"{household}-statement-{key}.csv", "text/csv")
        groups = money.statement_groups(postings)
        period = series.parse_period("month", key, zone)
        return ctx.render(
            request, "statement.html", household=household,
            household_name=await name_of(household), username=session.username, period=period,
            groups=groups, opening=opening, closing=opening + sum(p.amount for p in postings),
            community=community, euros=euros, kwh=kwh, fmt_time=_fmt(zone),
            labels=money.LINE_LABELS, printed=_fmt(zone)(ctx.now()),
            verify=money.verify_command, prev=period.shifted(-1), next=period.shifted(1))

    return r


def _recent_months(today: dt.date, count: int) -> list[str]:
    out, year, month = [], today.year, today.month
    for _ in range(count):
        out.append(f"{year}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out
