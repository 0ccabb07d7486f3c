"""The operator console in a real browser (Debian's Chromium via Playwright, never `playwright
install`), on a phone-sized screen with every request off 127.0.0.1 blocked: an operator accepts
an invitation (TOTP enrolment), signs in with a code, finds the silent gateway in the fleet view,
invites a household, rotates a key and replays a dead letter; a household's and a utility's
credentials open no console page."""

from __future__ import annotations

from pathlib import Path

from meterchain.backend.api.app import create_app

from tests.support.browser import SCREENSHOTS as SHOTS
from tests.support.browser import needs_chromium, offline_chromium, served
from tests.support.console import PASSWORD, build_console, code, secret_of
from tests.support.humantime import assert_no_unix_seconds
from tests.support.utility import ADMIN

pytestmark = needs_chromium(timeout=180)


async def test_operator_console_in_chromium(tmp_path: Path) -> None:
    cw = await build_console(tmp_path)
    app = create_app(str(cw.world.db), ADMIN, cw.world.log_key.verifier)
    async with served(app) as base, offline_chromium(base) as chromium:
        context = await chromium.new_context()
        page = await context.new_page()
        # the invitation: scan (read) the TOTP key, choose a password, prove a code
        await page.goto(f"{base}/console/invite/{cw.invitations['operator:all']}")
        secret = secret_of(await page.content())
        await page.fill("input[name=username]", "olga")
        await page.fill("input[name=password]", PASSWORD)
        await page.fill("input[name=repeat]", PASSWORD)
        await page.fill("input[name=code]", code(secret))
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/console/login?welcome=1")
        # sign in with password and the next code
        await page.fill("input[name=username]", "olga")
        await page.fill("input[name=password]", PASSWORD)
        await page.fill("input[name=code]", code(secret, 1))
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/console")
        # the fleet: filter to silent gateways, gw-b is there with its alarm
        await page.select_option("select[name=state]", "silent")
        await page.click("form.filters button")
        await page.wait_for_url("**/console?state=silent*")
        rows = page.locator("#gateways tr[data-device]")
        assert await rows.count() == 1 and await rows.first.get_attribute("data-device") == "gw-b"
        assert "1 h ago" in await rows.first.inner_text()
        assert "gw-b" in await page.inner_text("#alarms")
        assert_no_unix_seconds(await page.content(), "the fleet view")
        await page.screenshot(path=str(SHOTS / "console-fleet.png"), full_page=True)
        # invite a household
        await page.click("text=Households")
        await page.click("tr[data-household=h1] button")
        link = await page.inner_text("#shown-once")
        assert "/invite/" in link
        await page.screenshot(path=str(SHOTS / "console-invitation.png"), full_page=True)
        # rotate u1's key
        await page.goto(f"{base}/console/keys")
        assert_no_unix_seconds(await page.content(), "the keys page")
        row = page.locator("#keys tr[data-key]", has_text="utility u1").first
        old = await row.get_attribute("data-key")
        await row.locator("text=Rotate").click()
        new_token = await page.inner_text("#shown-once")
        assert f"replaces {old}" in await page.content()
        answer = await context.request.get(f"{base}/api/v1/whoami",
                                           headers={"Authorization": f"Bearer {new_token}"})
        assert answer.status == 200 and (await answer.json())["id"] == "u1"
        # replay the dead letter
        await page.goto(f"{base}/console/webhooks")
        dead = page.locator(f"tr[data-delivery='{cw.dead_delivery}']")
        assert "HTTP 503" in await dead.inner_text()
        await page.screenshot(path=str(SHOTS / "console-webhooks.png"), full_page=True)
        await dead.locator("button").click()
        await page.wait_for_url(f"{base}/console/webhooks")
        assert await page.locator(f"tr[data-delivery='{cw.dead_delivery}']").count() == 0
        # a household's and a utility's credentials open no console page
        for who in ("h1", "u1"):
            other = await chromium.new_context(extra_http_headers=cw.world.auth(who))
            tab = await other.new_page()
            for path in ("/console", "/console/keys", "/console/webhooks", "/console/households",
                         "/console/log"):
                await tab.goto(base + path)
                assert tab.url == f"{base}/console/login", (who, path)
                assert await tab.locator("#gateways, #keys, .dead, #households, #log").count() == 0
            await other.close()
    assert chromium.blocked == [], f"the console asked the network for {chromium.blocked}"
