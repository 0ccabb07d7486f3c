"""The market page and its API: a week of auctions (tests/support/market.py) as prices, volumes,
counts and a band, a price history chart, the grid curve of a dynamic tariff, and nothing about
any one neighbour."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.app import create_app
from meterchain.backend.settlement.market import market_view
from meterchain.backend.settlement.tables import SettlementTables, Terms
from meterchain.backend.store import open_store
from meterchain.backend.web.market_charts import grid_curve

from tests.support.market import NOW, PASSWORD, ZONE, Market, build_market, close_market

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    async def build() -> Market:
        built = await build_market(tmp_path_factory.mktemp("market"))
        await close_market(built)
        return built

    return asyncio.run(build())


def client(market: Market) -> TestClient:
    app = create_app(str(market.db), "s3cret", market.site.log_key.verifier)
    app.state.web.clock = lambda: NOW
    return TestClient(app)


def test_the_market_page_shows_prices_volumes_counts_and_the_band_and_no_neighbour(
        market: Market) -> None:
    with client(market) as http:
        answer = http.post("/login", data={"username": "user-4", "password": PASSWORD},
                           follow_redirects=False)
        assert answer.status_code == 303
        page = http.get("/households/h-4/market")
        assert page.status_code == 200
        text = page.text
        assert 'id="p-f" data-price="82000"' in text and 'id="p-g" data-price="320000"' in text
        # a point per day with local trades, May 27 to June 3 (June 3 up to noon)
        days = re.findall(r'<g class="day" data-day="([0-9-]+)" data-price="([0-9]+)"', text)
        assert [d for d, _ in days] == [f"2024-05-{k}" for k in range(27, 32)] + [
            "2024-06-01", "2024-06-02", "2024-06-03"]
        assert all(82_000 <= int(p) <= 320_000 for _, p in days)
        tiers = re.findall(r'data-tier="(\w+)" data-price="(\d+)"', text)
        assert {"green", "rest"} <= {t for t, _ in tiers}
        assert "buyers / sellers" in text
        # what one household sees of the others: aggregates, never an id or a name
        main = text.split("<main>")[1]
        assert not re.search(r"mp-\d|h-[1-8]\b|Household [1-8]", main.replace("h-4", ""))
        api = http.get("/api/v1/households/h-4/market",
                       headers={"Authorization": f"Bearer {market.keys['h-4']}"}).json()
        assert api["band"] == [82_000, 320_000] and api["market"] == "auction"
        assert [d["day"] for d in api["history"]] == [d for d, _ in days]
        assert "mp-" not in str(api)
        recent = api["recent"][0]
        assert recent["start"] == NOW - 900 and recent["importing"] >= 5
        assert http.get("/api/v1/households/h-4/market", headers={
            "Authorization": f"Bearer {market.keys['h-1']}"}).status_code == 404
        assert http.get("/households/h-1/market").status_code == 404


async def test_a_dynamic_tariff_shows_todays_and_tomorrows_grid_price_curve(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "mc.db")
    try:
        parties, tables = PartyTables(store), SettlementTables(store)
        await parties.add_utility("u", "Stadtwerk", 0)
        await parties.add_community("c", "u", "C", 0)
        day = int(dt.datetime(2024, 6, 3, tzinfo=ZoneInfo(ZONE)).timestamp())
        await tables.set_terms(Terms("c", day - 86_400, timezone=ZONE, retail_price=None,
                                     feed_in_price=None), 0)
        await tables.add_prices("c", "retail", [(day + 3600 * h, day + 3600 * (h + 1),
                                                 250_000 + 1000 * h) for h in range(48)], 0)
        await tables.add_prices("c", "feed_in", [(day, day + 2 * 86_400, 70_000)], 0)
        now = day + 12 * 3600
        view = await market_view(store, "c", now, ZONE)
        assert view.dynamic and view.band == (70_000, 262_000)
        assert len([c for c in view.curve if c[0] == "retail"]) == 48
        svg = grid_curve(view.curve, day, day + 2 * 86_400, now, ZONE, "grid")
        assert svg.count('class="step retail"') == 48 and svg.count('class="step feed_in"') == 1
        assert 'class="now"' in svg and "Mon 12:00–13:00 CEST: grid price 0.262 €/kWh" in svg
    finally:
        await store.close()


def test_the_bill_names_no_trading_partner(market: Market) -> None:
    """Auction pairs name metering points; the household's bill counts its partners instead."""
    with client(market) as http:
        assert http.post("/login", data={"username": "user-4", "password": PASSWORD},
                         follow_redirects=False).status_code == 303
        page = http.get("/households/h-4/bill/2024-05").text
        trades = page.split('id="trades"')[1]
        assert "bought (with 1 neighbour)" in trades or "bought (with 2 neighbours)" in trades
        assert not re.search(r"mp-[0-9]", trades)


async def test_a_prorata_market_counts_importing_and_exporting_members(tmp_path: Path) -> None:
    from tests.support.settlement import COMMUNITY as PRORATA
    from tests.support.settlement import T0, close_site, community, readings_at

    site = await community(tmp_path)  # mp-2 exports 600 Wh (imports 30), mp-1, mp-3 import
    try:
        await readings_at(site, T0, scale=0)
        for k in range(1, 3):
            await readings_at(site, T0 + 900 * k)
        await site.runner.settle_community(PRORATA, T0 + 1800)
        view = await market_view(site.admin, PRORATA, T0 + 1800, "UTC")
        assert [iv.start for iv in view.recent] == [T0 + 900, T0]
        [tier] = view.recent[0].tiers
        assert (tier.name, tier.price, tier.volume_wh) == ("prorata:mid_market", 190_000, 600)
        assert (tier.buyers, tier.sellers) == (3, 1)  # mp-2 also imports 30 Wh
        assert view.history[0].mean_price == 190_000 and view.history[0].local_wh == 1200
        assert view.band == (80_000, 300_000) and not view.dynamic
        await readings_at(site, T0 + 2700, skip=("mp-2",))  # no supply: nothing local
        await site.runner.settle_community(PRORATA, T0 + 2700 + 1800)
        quiet = (await market_view(site.admin, PRORATA, T0 + 2700, "UTC")).recent[0]
        assert quiet.start == T0 + 1800 and quiet.tiers == [] and quiet.exporting == 0
    finally:
        await close_site(site)
