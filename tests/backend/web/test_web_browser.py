"""The household dashboard in a real browser: headless Debian Chromium driven by Playwright.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium`` (CI's ``.ci/run``
installs it from Debian). A household signs in on a phone-sized screen, sees its chart with the
right number of quarter hours, sees live power change as its gateway publishes telemetry through
a real MQTT broker, opens its bill and adds the lines up, downloads a proof bundle that
``meterchain verify`` accepts, and cannot open another household's page by editing the URL.
Screenshots of the main pages go to tests/artifacts/screenshots/ on every run, and to docs/screenshots/
(the README shows those) with MC_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
from meterchain.backend.api.app import create_app
from meterchain.backend.web.live import LiveTelemetry, subscribe
from meterchain.contract.ack import telemetry_topic
from meterchain.contract.telemetry import Telemetry
from meterchain.mqtt import BrokerUrl

from tests.support.browser import SCREENSHOTS, needs_chromium, offline_chromium, served
from tests.support.paths import REPO_ROOT
from tests.support.web import NOW, PASSWORDS, build

DOC_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"

pytestmark = needs_chromium(timeout=180)


@asynccontextmanager
async def _listening(live: LiveTelemetry, broker_url: str) -> AsyncIterator[None]:
    """The dashboard's live view fed from the broker while the block runs."""
    task = asyncio.create_task(subscribe(live, broker_url, "web-test-telemetry"))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_household_dashboard_in_chromium(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    scenario = await build(tmp_path)
    app = create_app(str(scenario.db), "s3cret", scenario.log_key.verifier)  # type: ignore[attr-defined]
    web = app.state.web
    web.clock = lambda: NOW  # the scenario's "today": the DST day, 14:00 in Berlin
    web.settlements = scenario.settlements
    address = BrokerUrl.parse(broker.url)
    async with (served(app) as base, offline_chromium(base) as chromium, _listening(web.live, broker.url),
                aiomqtt.Client(address.host, address.port, username=address.username,
                               password=address.password, identifier="gw-alice-telemetry") as gateway):
        context = await chromium.new_context(device_scale_factor=1, accept_downloads=True)
        page = await context.new_page()

        # sign in: the dashboard sends a stranger to the sign-in page first
        await page.goto(f"{base}/households/h-alice")
        assert page.url == f"{base}/login"
        await page.screenshot(path=str(SCREENSHOTS / "sign-in.png"))
        await page.fill("input[name=username]", "alice")
        await page.fill("input[name=password]", PASSWORDS["alice"])
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/households/h-alice")

        # the chart of today (a DST day in Berlin): 92 quarter hours, one group each
        chart = page.locator("#point-mp-alice-house svg.chart")
        assert await chart.locator("g.slot").count() == 92
        assert await page.locator("#together-grid svg.chart g.slot").count() == 92
        assert await page.locator("#together-pv svg.chart g.slot").count() == 92
        assert "No data from pv inverter meter SDM-PV" in await page.inner_text("main")

        # live power: the gateway publishes unsigned telemetry; the page shows it change
        row = page.locator('#live li[data-meter="SDM-H2"]')
        for watts, shown in ((1234, "1.23 kW"), (2875, "2.88 kW")):
            await gateway.publish(telemetry_topic("gw-alice"), Telemetry(
                "gw-alice", "SDM-H2", NOW, watts, (2301, 2297, 2310)).to_cbor(), qos=0)
            await row.locator(".power", has_text=shown).wait_for(timeout=15_000)
        assert "live · unsigned" in await page.inner_text("#live h2")
        assert "230.1 V" in await row.inner_text()
        await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

        # the bill: every line's exact amount adds up to the total
        await page.click("header nav >> text=Bill")
        await page.wait_for_url(f"{base}/households/h-alice/bill/2024-03")
        amounts = await page.locator("#bill tr.line").evaluate_all(
            "rows => rows.map(r => Number(r.dataset.amount))")
        total = int(await page.locator("#bill").get_attribute("data-total") or "x")
        assert len(amounts) == 10 and sum(amounts) == total
        assert await page.locator("#trades tbody tr").count() > 0
        await page.screenshot(path=str(SCREENSHOTS / "bill.png"))

        # a reading's verification panel, and its proof bundle checked by `meterchain verify`
        await page.goto(f"{base}/households/h-alice/points/mp-alice-house/day/2024-03-31")
        await page.locator("a.verify").nth(20).click()
        statement = await page.inner_text("#statement")
        assert "Signed by gateway gw-alice for meter SDM-H1" in statement
        assert "households.test/log" in statement
        await page.screenshot(path=str(SCREENSHOTS / "verify.png"), full_page=True)
        async with page.expect_download() as info:
            await page.click("#bundle")
        bundle = tmp_path / (await info.value).suggested_filename
        await (await info.value).save_as(bundle)
        (tmp_path / "log.pub").write_text(
            await (await context.request.get(f"{base}/api/v1/log/public-key")).text())
        verified = subprocess.run(
            [sys.executable, "-m", "meterchain.cli.main", "verify", str(bundle),
             "--log-key", str(tmp_path / "log.pub")],
            capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "verified: reading gw-alice#" in verified.stdout

        # another household's pages by editing the URL: the same answer as a page that
        # does not exist, and nothing of bob's in it
        for url in ("/households/h-bob", "/households/h-bob/bill/2024-03",
                    "/households/h-alice/points/mp-bob-house/day/2024-03-31"):
            answer = await page.goto(base + url)
            assert answer is not None and answer.status == 404
            text = await page.inner_text("body")
            assert "There is no such page" in text and "Bob" not in text
    assert chromium.blocked == [], f"the dashboard asked the network for {chromium.blocked}"


def test_screenshots_are_small() -> None:
    """The committed screenshots the README shows exist and stay small enough for the repository."""
    shots = list(DOC_SCREENSHOTS.glob("*.png"))
    assert {s.name for s in shots} >= {"sign-in.png", "dashboard.png", "bill.png", "verify.png"}
    assert all(shot.stat().st_size < 400_000 for shot in shots), [
        (s.name, s.stat().st_size) for s in shots]
