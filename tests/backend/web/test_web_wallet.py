"""The wallet over HTTP: the page, the statement (CSV and print), the apps' API, the operator's
payments (API and CLI), and who may see what. The community is tests/support/market.py's week
settled by auction."""

from __future__ import annotations

import asyncio
import csv
import io
import warnings
from pathlib import Path

import pytest
from meterchain.backend.api.app import create_app
from meterchain.backend.settlement.tables import SettlementTables
from meterchain.backend.settlement.verify import verify_settlement
from meterchain.backend.settlement.wallet import WalletTables
from meterchain.backend.store import open_store
from meterchain.cli.main import app as cli_app
from typer.testing import CliRunner

from tests.support.market import COMMUNITY, NOW, PASSWORD, Market, build_market, close_market

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(180)
ADMIN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    async def build() -> Market:
        built = await build_market(tmp_path_factory.mktemp("wallet"))
        await close_market(built)
        return built

    return asyncio.run(build())


def client(market: Market) -> TestClient:
    app = create_app(str(market.db), "s3cret", market.site.log_key.verifier)
    app.state.web.clock = lambda: NOW
    return TestClient(app)


def sign_in(http: TestClient, household: str) -> None:
    user = "user-" + household.removeprefix("h-")
    answer = http.post("/login", data={"username": user, "password": PASSWORD},
                       follow_redirects=False)
    assert answer.status_code == 303, answer.text


def key(market: Market, household: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {market.keys[household]}"}


async def _sum(db: Path, household: str) -> tuple[int, int]:
    store = await open_store(db)
    try:
        postings = await WalletTables(store).postings("household", household)
        return sum(p.amount for p in postings), len(postings)
    finally:
        await store.close()


def test_the_wallet_page_shows_the_sum_of_the_postings_and_a_marked_estimate(market: Market) -> None:
    total, count = asyncio.run(_sum(market.db, "h-1"))
    assert count > 500
    with client(market) as http:
        sign_in(http, "h-1")
        page = http.get("/households/h-1/wallet")
        assert page.status_code == 200
        assert f'data-balance="{total}"' in page.text
        assert "estimate, not posted" in page.text and 'id="provisional"' in page.text
        assert "monthly fee and VAT of 1" in page.text  # June is not billed yet
        assert 'class="earning-day"' in page.text and 'class="earning-month"' in page.text
        api = http.get("/api/v1/households/h-1/wallet", headers=key(market, "h-1")).json()
        assert api["balance"] == total and api["provisional"]["open_months"] == 1
        assert api["provisional"]["amount"] < 0  # June's monthly fee and VAT are owed
        assert any(p["line"] == "local_energy_sold" and p["amount"] > 0 for p in api["postings"])
        # earnings per month and per day: the sold-energy postings, the same in page and API
        months = http.get("/api/v1/households/h-1/wallet/earnings?by=month",
                          headers=key(market, "h-1")).json()
        assert [m["key"] for m in months] == ["2024-05", "2024-06"]
        sold = sum(p["amount"] for p in http.get(
            f"/api/v1/households/h-1/wallet?limit=10000&end={NOW}", headers=key(market, "h-1")
        ).json()["postings"] if p["line"] in ("local_energy_sold", "feed_in"))
        assert sum(m["amount"] for m in months) == sold > 0
        days = http.get("/api/v1/households/h-1/wallet/earnings?by=day",
                        headers=key(market, "h-1")).json()
        assert len(days) == 8 and sum(d["amount"] for d in days) == sold
        assert all(d["local_wh"] > 0 and d["local_amount"] >= d["local_wh"] * 82 for d in days)
        assert f'data-amount="{months[1]["amount"]}"' in page.text
        # the seller's nav reaches the wallet from every page
        assert 'href="/households/h-1/wallet"' in http.get("/households/h-1").text


def test_a_statement_adds_up_and_its_lines_name_digests_that_verify(market: Market) -> None:
    with client(market) as http:
        sign_in(http, "h-1")
        answer = http.get("/households/h-1/wallet/statement/2024-05.csv")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        opening, closing = int(rows[0]["balance_micro_eur"]), int(rows[-1]["balance_micro_eur"])
        lines = rows[1:-1]
        assert opening == 0 and closing == opening + sum(int(r["amount_micro_eur"]) for r in lines)
        bill = [r for r in lines if r["source"] == "bill"]
        assert {r["line"] for r in bill} == {"monthly_fee", "vat"}
        settled = [r for r in lines if r["source"] == "interval"]
        assert settled and all(len(r["settlement_digest"]) == 64 and r["leaf_index"]
                               for r in settled)
        assert settled[0]["verify"].startswith("meterchain settle --verify")
        html = http.get("/households/h-1/wallet/statement/2024-05")
        assert html.status_code == 200 and f'data-closing="{closing}"' in html.text
        assert "window.print()" in html.text
        api = http.get("/api/v1/households/h-1/wallet/statement?month=2024-05",
                       headers=key(market, "h-1"))
        assert api.status_code == 200 and api.text == answer.text
        assert http.get("/households/h-1/wallet/statement/2024-13.csv").status_code == 404
        assert http.get("/households/h-1/wallet/statement/0000-01").status_code == 404
        assert http.get("/api/v1/households/h-1/wallet/statement?month=0000-01",
                        headers=key(market, "h-1")).status_code == 400  # found by schemathesis

    async def check(line: dict[str, str]) -> None:
        store = await open_store(market.db)
        try:
            start = int(line["interval_start_utc"])
            row = await SettlementTables(store).settlement(COMMUNITY, start, int(line["revision"]))
            assert row is not None and row.digest.hex() == line["settlement_digest"]
            report = await verify_settlement(store, COMMUNITY, start, int(line["revision"]),
                                             market.site.log_key.verifier)
            assert report.ok, report.problems
        finally:
            await store.close()

    asyncio.run(check(settled[len(settled) // 2]))


def test_only_the_household_and_the_admin_see_a_wallet_and_only_the_admin_posts_payments(
        market: Market) -> None:
    with client(market) as http:
        other = http.get("/api/v1/households/h-1/wallet", headers=key(market, "h-4"))
        unknown = http.get("/api/v1/households/h-nobody/wallet", headers=key(market, "h-4"))
        assert other.status_code == unknown.status_code == 404
        assert http.get("/api/v1/households/h-1/wallet/statement?month=2024-05",
                        headers=key(market, "h-4")).status_code == 404
        before = http.get("/api/v1/households/h-1/wallet", headers=ADMIN).json()["balance"]
        refused = http.post("/api/v1/households/h-1/wallet/payments",
                            json={"amount": 1_000_000}, headers=key(market, "h-1"))
        assert refused.status_code == 403
        paid = http.post("/api/v1/households/h-1/wallet/payments",
                         json={"amount": 40_000_000, "reference": "SEPA 2024-06"}, headers=ADMIN)
        assert paid.status_code == 201 and paid.json()["amount"] == 40_000_000
        refund = http.post("/api/v1/households/h-1/wallet/payments",
                           json={"kind": "refund", "amount": 2_500_000}, headers=ADMIN)
        assert refund.json()["amount"] == -2_500_000
        assert http.post("/api/v1/households/h-1/wallet/payments", json={"amount": 0},
                         headers=ADMIN).status_code == 422
        assert http.post("/api/v1/households/h-nobody/wallet/payments", json={"amount": 5},
                         headers=ADMIN).status_code == 404
        after = http.get("/api/v1/households/h-1/wallet", headers=key(market, "h-1")).json()
        assert after["balance"] == before + 37_500_000
        sign_in(http, "h-4")
        for url in ("/households/h-1/wallet", "/households/h-1/wallet/statement/2024-05",
                    "/households/h-1/wallet/statement/2024-05.csv"):
            assert http.get(url).status_code == 404


def test_the_operator_records_payments_with_the_cli(market: Market) -> None:
    runner = CliRunner()
    before, _ = asyncio.run(_sum(market.db, "h-6"))
    paid = runner.invoke(cli_app, ["settle", "payment", "--db", str(market.db), "--household",
                                   "h-6", "--amount", "12000000", "--reference", "transfer 17"])
    assert paid.exit_code == 0, paid.output
    assert "posted payment 12.00 €" in paid.output
    bad = runner.invoke(cli_app, ["settle", "payment", "--db", str(market.db), "--household",
                                  "h-6", "--amount", "-3"])
    assert bad.exit_code == 1 and "amount must be" in bad.output
    shown = runner.invoke(cli_app, ["settle", "wallet", "--db", str(market.db), "--household",
                                    "h-6", "--last", "3"])
    assert shown.exit_code == 0 and "payment" in shown.output
    after, _ = asyncio.run(_sum(market.db, "h-6"))
    assert after == before + 12_000_000


def test_the_provisional_figure_prices_unsettled_quarter_hours_as_without_the_community(
        market: Market) -> None:
    from meterchain.backend.settlement.household import provisional
    from meterchain.backend.settlement.netting.rounding import div_half_even

    from tests.support.market import flow, reopen_market, send_until

    async def run() -> None:
        store = await open_store(market.db)
        try:
            before = await provisional(store, "h-4", NOW + 1800)
        finally:
            await store.close()
        assert before.intervals == 0 and before.missing == 2  # no readings yet for 12:00-12:30
        await reopen_market(market)
        try:
            await send_until(market, NOW + 900, NOW + 1800)  # read, not settled
        finally:
            await close_market(market)
        store = await open_store(market.db)
        try:
            after = await provisional(store, "h-4", NOW + 1800)
        finally:
            await store.close()
        imports = [flow("h-4", NOW + 900)[0], flow("h-4", NOW + 1800)[0]]
        assert (after.intervals, after.import_wh, after.since) == (2, sum(imports), NOW)
        charge = div_half_even(sum(imports) * (320_000 + 75_000), 1000)  # p_g + grid network fee
        vat = div_half_even(charge * 1900, 10_000)
        assert after.amount - before.amount == -(charge + vat)

    asyncio.run(run())
