"""Trading conditions: the form and the apps' API save a listing from the next unsettled quarter
hour (a pending change is replaced, a settled interval never changes), the preview re-runs last
week's stored inputs without touching them, and only the occupying household may act."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from meterchain.backend.api.app import create_app
from meterchain.backend.settlement.conditions import Conditions, parse_price, run_preview
from meterchain.backend.settlement.runner import SettledInput
from meterchain.backend.settlement.tables import SettlementTables
from meterchain.backend.store import open_store

from tests.support.market import (
    COMMUNITY,
    NOW,
    PASSWORD,
    Market,
    build_market,
    close_market,
    next_settlement,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    async def build() -> Market:
        built = await build_market(tmp_path_factory.mktemp("conditions"))
        await close_market(built)
        return built

    return asyncio.run(build())


def client(market: Market, now: int = NOW) -> TestClient:
    app = create_app(str(market.db), "s3cret", market.site.log_key.verifier)
    app.state.web.clock = lambda: now
    return TestClient(app)


def sign_in(http: TestClient, k: int) -> None:
    answer = http.post("/login", data={"username": f"user-{k}", "password": PASSWORD},
                       follow_redirects=False)
    assert answer.status_code == 303


async def _stored(market: Market) -> tuple[dict[int, bytes], list[tuple[object, ...]]]:
    store = await open_store(market.db)
    try:
        rows = await SettlementTables(store).in_force(COMMUNITY, 0, 2**62)
        listings = await SettlementTables(store).listings(COMMUNITY, member="mp-1")
        return ({s: r.digest for s, r in rows.items()},
                [(x.valid_from, x.valid_to, x.sell_ask) for x in listings])
    finally:
        await store.close()


def test_prices_are_read_as_euros_per_kwh() -> None:
    assert parse_price("0.18", "x") == 180_000 and parse_price(" 0,205 €/kWh", "x") == 205_000
    assert parse_price("", "x") is None and parse_price("-0.01", "x") == -10_000
    for bad in ("abc", "11", "nan", "1e9"):
        with pytest.raises(Exception, match="€/kWh"):
            parse_price(bad, "The sell ask")


def test_preview_saves_nothing_and_a_change_takes_effect_from_the_next_quarter_hour(
        market: Market) -> None:
    before = asyncio.run(_stored(market))
    with client(market) as http:
        sign_in(http, 1)
        page = http.get("/households/h-1/conditions")
        assert page.status_code == 200
        assert "sell locally only at <strong>0.150 €/kWh</strong>" in page.text
        assert 'value="0.15"' in page.text and "Mon 3 Jun 2024 12:15 CEST" in page.text

        high = http.post("/households/h-1/conditions", data={
            "point": "mp-1", "sell_ask": "0.31", "action": "preview"})
        low = http.post("/households/h-1/conditions", data={
            "point": "mp-1", "sell_ask": "", "action": "preview"})
        assert high.status_code == low.status_code == 200
        assert "you would have sold" in high.text and "instead of" in high.text

        def number(text: str, name: str) -> int:
            return int(text.split(f'data-{name}="')[1].split('"')[0])

        assert number(high.text, "intervals") == 7 * 96
        assert number(high.text, "sold-wh") < number(low.text, "sold-wh")
        assert number(low.text, "sold") >= 0 and number(low.text, "feed-in") > 0
        assert asyncio.run(_stored(market)) == before  # a preview stores nothing

        bad = http.post("/households/h-1/conditions", data={
            "point": "mp-1", "sell_ask": "cheap", "action": "save"})
        assert bad.status_code == 400 and "must be a price in €/kWh" in bad.text

        saved = http.post("/households/h-1/conditions", data={
            "point": "mp-1", "sell_ask": "0.13", "green_source": "on", "action": "save"})
        assert saved.status_code == 200 and f'data-from="{NOW + 900}"' in saved.text
        again = http.post("/households/h-1/conditions", data={
            "point": "mp-1", "sell_ask": "0.12", "green_source": "on", "action": "save"})
        assert f'data-from="{NOW + 900}"' in again.text
    digests, listings = asyncio.run(_stored(market))
    assert digests == before[0]  # nothing settled changed
    assert listings == [(before[1][0][0], NOW + 900, 150_000), (NOW + 900, None, 120_000)]

    # the next settlement uses the new ask from its first quarter hour on, not before
    asyncio.run(next_settlement(market, 4, NOW + 3600 + 3600))

    async def inputs() -> dict[int, int | None]:
        store = await open_store(market.db)
        try:
            rows = await SettlementTables(store).in_force(COMMUNITY, NOW, NOW + 3600)
            out = {}
            for s, row in rows.items():
                listings = SettledInput.decode(row.input).listings or {}
                out[s] = listings["mp-1"].sell_ask
            return out
        finally:
            await store.close()

    assert asyncio.run(inputs()) == {NOW: 150_000, NOW + 900: 120_000, NOW + 1800: 120_000,
                                     NOW + 2700: 120_000}


def test_the_api_and_the_scope_of_conditions(market: Market) -> None:
    h1 = {"Authorization": f"Bearer {market.keys['h-1']}"}
    h4 = {"Authorization": f"Bearer {market.keys['h-4']}"}
    with client(market, NOW + 4 * 3600) as http:
        got = http.get("/api/v1/households/h-4/points/mp-4/conditions", headers=h4)
        assert got.status_code == 200
        body = got.json()
        assert body["in_force"]["buy_limit"] == 250_000 and body["market"] == "auction"
        assert body["band"] == [82_000, 320_000]
        preview = http.post("/api/v1/households/h-4/points/mp-4/conditions/preview",
                            json={"buy_limit": 90_000}, headers=h4)
        assert preview.status_code == 200
        wide = http.post("/api/v1/households/h-4/points/mp-4/conditions/preview",
                         json={"buy_limit": None}, headers=h4).json()
        assert preview.json()["bought_local_wh"] <= wide["bought_local_wh"]
        put = http.put("/api/v1/households/h-4/points/mp-4/conditions",
                       json={"buy_limit": 240_000, "green_only": True}, headers=h4)
        assert put.status_code == 200 and put.json()["valid_from"] > NOW
        again = http.get("/api/v1/households/h-4/points/mp-4/conditions", headers=h4).json()
        assert again["pending"]["buy_limit"] == 240_000 and again["pending"]["green_only"]
        # another household's point, through its own household or the other's: 404 alike
        for url in ("/api/v1/households/h-4/points/mp-1/conditions",
                    "/api/v1/households/h-1/points/mp-1/conditions",
                    "/api/v1/households/h-4/points/mp-unknown/conditions"):
            assert http.get(url, headers=h4).status_code == 404
        assert http.put("/api/v1/households/h-1/points/mp-1/conditions", json={"sell_ask": 1},
                        headers=h4).status_code == 404
        assert http.post("/api/v1/households/h-4/points/mp-1/conditions/preview", json={},
                         headers=h4).status_code == 404
        assert http.get("/api/v1/households/h-1/points/mp-1/conditions",
                        headers=h1).status_code == 200
        # the raw listings route refuses a listing that would reach into settled intervals
        back = http.post("/api/v1/communities/sonnenhof/listings", headers=h1, json={
            "member": "mp-1", "valid_from": NOW - 86_400, "sell_ask": 300_000})
        assert back.status_code == 400 and "settled" in back.json()["detail"]
        sign_in(http, 4)
        page = http.post("/households/h-4/conditions", data={"point": "mp-1", "sell_ask": "0.3",
                                                              "action": "save"})
        assert page.status_code == 404
        assert http.get("/households/h-1/conditions").status_code == 404


def test_the_preview_is_the_engine_on_the_stored_inputs(market: Market) -> None:
    async def check() -> None:
        store = await open_store(market.db)
        try:
            rows = list((await SettlementTables(store).in_force(COMMUNITY, NOW - 86_400,
                                                                 NOW)).values())
        finally:
            await store.close()
        same = run_preview(rows, "mp-1", Conditions(sell_ask=150_000), NOW - 86_400, NOW)
        # h-1's stored conditions were an ask of 0.15 the whole day: nothing changes
        assert (same.sold_local_wh, same.sold_local) == (same.settled_sold_local_wh,
                                                         same.settled_sold_local)
        never = run_preview(rows, "mp-1", Conditions(sell_ask=10_000_000), NOW - 86_400, NOW)
        assert never.sold_local_wh == 0 and never.feed_in_value == 0 < same.feed_in_value
        # the feed-in comparison is the same energy at p_f (82,000 µ€/kWh in this community)
        assert same.feed_in_value == (same.sold_local_wh * 82_000 + 500) // 1000
        assert never.export_wh == same.export_wh > same.sold_local_wh

    asyncio.run(check())
