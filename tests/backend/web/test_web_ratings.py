"""Ratings: only partners of the last 30 days, once per partner and month (changeable), seen by
others only as an aggregate of at least five households, names only on opt-in, and read by no
netting or clearing code."""

from __future__ import annotations

import ast
import asyncio
import warnings
from pathlib import Path

import pytest
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.app import create_app
from meterchain.backend.settlement import ratings
from meterchain.backend.settlement.ratings import Aggregate, traded_with

from tests.support.market import NOW, PASSWORD, Market, build_market, close_market
from tests.support.paths import REPO_ROOT
from tests.support.settlement import COMMUNITY as PRORATA
from tests.support.settlement import T0, close_site, community, readings_at

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(180)
ADMIN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    async def build() -> Market:
        built = await build_market(tmp_path_factory.mktemp("ratings"))
        await close_market(built)
        return built

    return asyncio.run(build())


def key(market: Market, household: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {market.keys[household]}"}


def test_no_netting_or_clearing_module_imports_ratings() -> None:
    engine = REPO_ROOT / "backend" / "settlement"
    modules = [*sorted((engine / "netting").glob("*.py")), engine / "runner.py",
               engine / "verify.py", engine / "tables.py", engine / "wallet.py"]
    assert len(modules) > 10
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or "", *(a.name for a in node.names)]
                     if isinstance(node, ast.ImportFrom) else [])
            assert not any("rating" in n for n in names), (path, names)


def test_partners_come_from_the_auction_pairs(market: Market) -> None:
    async def check() -> None:
        from meterchain.backend.store import open_store

        store = await open_store(market.db)
        try:
            green_only = await traded_with(store, "h-5", NOW)
            assert set(green_only) == {"h-2"}  # a green-only buyer met only the green source
            buyer = await traded_with(store, "h-4", NOW)
            assert set(buyer) <= {"h-1", "h-2", "h-3"} and buyer
            assert all(bought and not sold for bought, sold, _ in buyer.values())
            seller = await traded_with(store, "h-1", NOW)
            assert set(seller) <= {f"h-{k}" for k in range(4, 9)}
            assert all(sold for _, sold, _ in seller.values())
            assert await traded_with(store, "h-4", NOW + 40 * 86_400) == {}  # 30 days only
        finally:
            await store.close()

    asyncio.run(check())


def test_a_sellers_aggregate_appears_at_five_raters_and_never_who_rated(market: Market) -> None:
    app = create_app(str(market.db), "s3cret", market.site.log_key.verifier)
    app.state.web.clock = lambda: NOW
    with TestClient(app) as http:
        assert http.put("/api/v1/households/h-1/profile", headers=key(market, "h-1"),
                        json={"display_name": "Sunny Anna", "show_name": True}).status_code == 204
        raters = sorted(h for h in (f"h-{k}" for k in range(4, 9))
                        if any(p["label"] == "Sunny Anna" for p in http.get(
                            f"/api/v1/households/{h}/partners", headers=key(market, h)).json()))
        assert len(raters) >= 5 - 1, raters  # h-5 buys green only: not h-1's partner
        stars = {"h-4": 5, "h-6": 4, "h-7": 4, "h-8": 3}
        for rater in raters:
            partners = http.get(f"/api/v1/households/{rater}/partners",
                                headers=key(market, rater)).json()
            anna = next(p for p in partners if p["label"] == "Sunny Anna")
            other = [p for p in partners if p["label"] != "Sunny Anna"]
            assert all(p["label"] == "a neighbour" for p in other)  # no opt-in: no name
            done = http.put(f"/api/v1/households/{rater}/ratings/{anna['handle']}",
                            json={"stars": stars[rater], "comment": f"secret note {rater}"},
                            headers=key(market, rater))
            assert done.status_code == 200 and done.json()["stars"] == stars[rater]
            assert done.json()["aggregate"] is None  # four raters at most so far
        # a rating changed within the month replaces the first one
        first = http.get("/api/v1/households/h-4/partners", headers=key(market, "h-4")).json()
        handle = next(p["handle"] for p in first if p["label"] == "Sunny Anna")
        assert http.put(f"/api/v1/households/h-4/ratings/{handle}", json={"stars": 4},
                        headers=key(market, "h-4")).json()["stars"] == 4
        # the handle of one rater means nothing to another; the admin does not rate
        assert http.put(f"/api/v1/households/h-6/ratings/{handle}", json={"stars": 1},
                        headers=key(market, "h-6")).status_code == 404
        assert http.put(f"/api/v1/households/h-4/ratings/{handle}", json={"stars": 1},
                        headers=ADMIN).status_code == 403
        assert http.put(f"/api/v1/households/h-4/ratings/{handle}", json={"stars": 6},
                        headers=key(market, "h-4")).status_code == 422

        # four raters: nothing shows yet, not even to the rated household itself
        mine = http.get("/api/v1/households/h-1/ratings", headers=key(market, "h-1")).json()
        assert mine["mine"] is None and mine["community"] == []

    async def fifth() -> None:  # a fifth rater (the week has only four buyers from h-1)
        from meterchain.backend.store import open_store

        store = await open_store(market.db)
        try:
            await PartyTables(store).add_household("h-9", "sonnenhof", "Nine", NOW)
            await ratings.RatingTables(store).rate("h-9", "h-1", "2024-06", 2, "note of nine", NOW)
        finally:
            await store.close()

    asyncio.run(fifth())
    app = create_app(str(market.db), "s3cret", market.site.log_key.verifier)
    app.state.web.clock = lambda: NOW
    with TestClient(app) as http:
        expected = Aggregate(5, 4 + 4 + 4 + 3 + 2)
        mine = http.get("/api/v1/households/h-1/ratings", headers=key(market, "h-1")).json()
        assert mine["mine"] == {"raters": 5, "mean": expected.mean} and expected.mean == "3.4"
        seen = http.get("/api/v1/households/h-6/ratings", headers=key(market, "h-6")).json()
        assert seen["community"] == [["Sunny Anna", 5, "3.4"]]
        login = http.post("/login", data={"username": "user-6", "password": PASSWORD},
                          follow_redirects=False)
        assert login.status_code == 303
        page = http.get("/households/h-6/market").text
        assert 'data-raters="5" data-mean="3.4"' in page and "Sunny Anna: ★ 3.4" in page
        rate_page = http.get("/households/h-6/ratings").text
        assert "★ 3.4 from 5 households" in rate_page and "secret note h-6" in rate_page
        for text in (page, rate_page):
            for rater in ("h-4", "h-7", "h-8", "h-9"):
                assert f"secret note {rater}" not in text and "note of nine" not in text
        assert "Household 4" not in page and "Nine" not in page
        # the page form: a partner of h-6, rated; then the same handle from another household
        handle = rate_page.split('data-handle="')[1].split('"')[0]
        done = http.post("/households/h-6/ratings", data={"partner": handle, "stars": "2"})
        assert done.status_code == 200 and "Saved: ★★" in done.text
        bad = http.post("/households/h-6/ratings", data={"partner": "0" * 12, "stars": "2"})
        assert bad.status_code == 404
        assert http.get("/households/h-1/ratings").status_code == 404


async def test_prorata_partners_are_the_sellers_in_the_seller_mix(tmp_path: Path) -> None:
    site = await community(tmp_path)  # mp-2 exports, mp-1 and mp-3 import
    try:
        parties = PartyTables(site.admin)
        for h, point in (("h-a", "mp-1"), ("h-b", "mp-2"), ("h-c", "mp-3")):
            await parties.add_household(h, PRORATA, h, T0)
            await parties.add_occupancy(point, h, T0, None, T0)
        await readings_at(site, T0, scale=0)
        for k in range(1, 4):
            await readings_at(site, T0 + 900 * k)
        await site.runner.settle_community(PRORATA, T0 + 3600)
        assert set(await traded_with(site.admin, "h-a", T0 + 3600)) == {"h-b"}
        assert await traded_with(site.admin, "h-a", T0 + 3600) == {"h-b": (3, 0, T0 + 1800)}
        assert await traded_with(site.admin, "h-b", T0 + 3600) == {}  # sellers rate nobody here
    finally:
        await close_site(site)


async def test_erasure_takes_the_profile_and_ratings_and_keeps_the_wallet(tmp_path: Path) -> None:
    from meterchain.backend.erasure.tables import ErasureTables
    from meterchain.backend.settlement.wallet import WalletTables

    site = await community(tmp_path)
    try:
        parties = PartyTables(site.admin)
        for h, point in (("h-a", "mp-1"), ("h-b", "mp-2"), ("h-c", "mp-3")):
            await parties.add_household(h, PRORATA, h, T0)
            await parties.add_occupancy(point, h, T0, None, T0)
        await readings_at(site, T0, scale=0)
        await readings_at(site, T0 + 900)
        await site.runner.settle_community(PRORATA, T0 + 900)
        tables = ratings.RatingTables(site.admin)
        await tables.set_profile("h-b", "Bea", True)
        await tables.rate("h-a", "h-b", "2023-11", 5, "kind words", T0)
        await tables.rate("h-b", "h-c", "2023-11", 2, "her words", T0)
        await tables.rate("h-c", "h-a", "2023-11", 4, None, T0)
        postings = await WalletTables(site.admin).postings("household", "h-b")
        assert postings
        assert await ErasureTables(site.admin).erase("h-b", "test", T0 + 1000) is not None
        assert await tables.profile("h-b") == (None, False)
        left = await site.admin.connection.execute_fetchall(
            "SELECT rater, rated FROM market_ratings ORDER BY rater")
        assert [tuple(r) for r in left] == [("h-c", "h-a")]
        assert await WalletTables(site.admin).postings("household", "h-b") == postings
    finally:
        await close_site(site)
