"""Trading from the dashboard in a real browser (headless Debian Chromium via Playwright, like
test_web_browser.py): a seller signs in, sees last month's auction prices on the market page,
changes its sell ask, sees the preview, and after the next settlement sees the trade, the
posting and the new balance in its wallet; another household can neither read nor change its
conditions or wallet; a rating shows only in the seller's aggregate.

The community is tests/support/market.py's week of auctions (27 May to 3 June 2024). Screenshots
go to tests/artifacts/screenshots/ (docs/screenshots/ with MC_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import re
from pathlib import Path

from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.app import create_app
from meterchain.backend.settlement.ratings import RatingTables
from meterchain.backend.store import open_store

from tests.support.browser import SCREENSHOTS, needs_chromium, offline_chromium, served
from tests.support.market import NOW, PASSWORD, build_market, close_market, next_settlement

pytestmark = needs_chromium(timeout=240)


async def _seed_ratings(db: Path) -> None:
    """Four households already rated h-1 this month (one is not a trading partner any more:
    it moved in and out of the street); the fifth rating comes from the browser."""
    store = await open_store(db)
    try:
        await PartyTables(store).add_household("h-9", "sonnenhof", "Former neighbour", NOW)
        tables = RatingTables(store)
        for rater, stars in (("h-6", 4), ("h-7", 5), ("h-8", 3), ("h-9", 4)):
            await tables.rate(rater, "h-1", "2024-06", stars, f"private note of {rater}", NOW)
    finally:
        await store.close()


async def test_a_household_trades_from_its_dashboard(tmp_path: Path) -> None:
    market = await build_market(tmp_path)
    await close_market(market)
    await _seed_ratings(market.db)
    clock = [NOW]
    app = create_app(str(market.db), "s3cret", market.site.log_key.verifier)
    app.state.web.clock = lambda: clock[0]
    async with served(app) as base, offline_chromium(base) as chromium:
        seller = await (await chromium.new_context(device_scale_factor=1)).new_page()
        await seller.goto(f"{base}/login")
        await seller.fill("input[name=username]", "user-1")
        await seller.fill("input[name=password]", PASSWORD)
        await seller.click("button[type=submit]")
        await seller.wait_for_url(f"{base}/households/h-1")

        # the market: last month's auction prices, day by day, inside the band
        await seller.click("header nav >> text=Market")
        await seller.wait_for_url(f"{base}/households/h-1/market")
        may = await seller.locator("svg.pricechart g.day").evaluate_all(
            "gs => gs.map(g => [g.dataset.day, Number(g.dataset.price)])")
        assert [d for d, _ in may if d.startswith("2024-05")] == [
            f"2024-05-{k}" for k in range(27, 32)]
        assert all(82_000 <= p <= 320_000 for _, p in may)
        assert await seller.locator("#recent tr.tier[data-tier=rest]").count() > 0
        assert "mp-2" not in await seller.inner_text("main")
        await seller.screenshot(path=str(SCREENSHOTS / "market.png"))

        # my trading conditions: a lower ask, previewed on last week, then saved
        await seller.click("text=Set your trading conditions")
        await seller.wait_for_url(f"{base}/households/h-1/conditions")
        ask = seller.locator("#conditions-mp-1 input[name=sell_ask]")
        assert await ask.input_value() == "0.15"
        await ask.fill("0.09")
        await seller.click("#conditions-mp-1 button[value=preview]")
        preview = seller.locator("#preview")
        await preview.wait_for()
        text = await preview.inner_text()
        assert re.search(r"you would have sold \d+\.\d{3} kWh locally for €\d+\.\d\d instead "
                         r"of €\d+\.\d\d feed-in", text), text
        assert int(await preview.get_attribute("data-intervals") or 0) == 7 * 96
        await seller.screenshot(path=str(SCREENSHOTS / "conditions.png"), full_page=True)
        await seller.click("#conditions-mp-1 button[value=save]")
        await seller.locator("#saved").wait_for()
        assert "12:15" in await seller.inner_text("#saved")
        assert int(await seller.get_attribute("#saved", "data-from") or 0) == NOW + 900

        await seller.goto(f"{base}/households/h-1/wallet")
        before = int(await seller.get_attribute("#balance", "data-balance") or "x")

        # the next settlement: four more quarter hours at noon, settled by the runner
        await next_settlement(market, 4, NOW + 7200)
        clock[0] = NOW + 7200
        await seller.reload()
        after = int(await seller.get_attribute("#balance", "data-balance") or "x")
        rows = seller.locator("#postings tr.posting[data-source=interval]")
        first = await rows.first.inner_text()
        assert "Local energy sold" in first and "mp-1" in first, first
        new = await seller.locator("#postings tr.posting").evaluate_all(
            "rs => rs.slice(0, 4).map(r => Number(r.dataset.amount))")
        assert after == before + sum(new) and after != before
        assert "digest" in first
        api = await seller.request.get(f"{base}/api/v1/households/h-1/wallet",
                                       headers={"Authorization":
                                                f"Bearer {market.keys['h-1']}"})
        assert (await api.json())["balance"] == after
        await seller.screenshot(path=str(SCREENSHOTS / "wallet.png"))
        # the trade itself, at the new ask, on the bill page of June
        await seller.goto(f"{base}/households/h-1/bill/2024-06")
        trades = await seller.inner_text("#trades")
        assert "3 Jun 12:15" in trades and "sold" in trades

        # h-1 shows its name next to its rating (opt-in)
        await seller.goto(f"{base}/households/h-1/ratings")
        await seller.fill("input[name=display_name]", "Sunny Anna")
        await seller.check("input[name=show_name]")
        await seller.click("#my-rating button[type=submit]")
        await seller.locator("#my-rating .ok").wait_for()

        # another household: h-1's conditions and wallet are not there for it
        buyer = await (await chromium.new_context(device_scale_factor=1)).new_page()
        await buyer.goto(f"{base}/login")
        await buyer.fill("input[name=username]", "user-4")
        await buyer.fill("input[name=password]", PASSWORD)
        await buyer.click("button[type=submit]")
        await buyer.wait_for_url(f"{base}/households/h-4")
        for url in ("/households/h-1/conditions", "/households/h-1/wallet",
                    "/households/h-1/wallet/statement/2024-06.csv",
                    "/households/h-1/ratings"):
            answer = await buyer.goto(base + url)
            assert answer is not None and answer.status == 404, url
        change = await buyer.request.post(f"{base}/households/h-4/conditions", form={
            "point": "mp-1", "sell_ask": "0.31", "action": "save"})
        assert change.status == 404

        # h-4 rates h-1: the fifth household, so the aggregate appears, never the record
        await buyer.goto(f"{base}/households/h-4/ratings")
        anna = buyer.locator("form.partner", has_text="Sunny Anna")
        await anna.locator("select[name=stars]").select_option("4")
        await anna.locator("input[name=comment]").fill("friendly and punctual")
        await anna.locator("button[type=submit]").click()
        await buyer.locator(".saved-rating").wait_for()
        await buyer.screenshot(path=str(SCREENSHOTS / "ratings.png"))
        await buyer.goto(f"{base}/households/h-4/market")
        rating = buyer.locator("#ratings li.seller-rating")
        assert await rating.count() == 1
        assert await rating.get_attribute("data-raters") == "5"
        assert await rating.get_attribute("data-mean") == "4.0"
        assert "Sunny Anna: ★ 4.0 from 5 households" in await rating.inner_text()
        body = await buyer.content()
        assert "private note" not in body and "friendly and punctual" not in body
        await seller.goto(f"{base}/households/h-1/ratings")
        own = await seller.inner_text("#my-rating")
        assert "★ 4.0 from 5 households" in own
        assert "friendly and punctual" not in await seller.content()
    assert chromium.blocked == [], f"the market pages asked the network for {chromium.blocked}"
