"""/docs renders offline in a real browser: Swagger UI comes from this backend (the swagger-ui-py
package's dist files), every request off 127.0.0.1 is blocked, and the favicon is served."""

from __future__ import annotations

from pathlib import Path

from meterchain.backend.api.app import create_app
from meterchain.backend.service import load_or_create_log_key
from meterchain.backend.store import open_store

from tests.support.browser import SCREENSHOTS, needs_chromium, offline_chromium, served

pytestmark = needs_chromium(timeout=120)


async def test_docs_render_with_the_network_blocked(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "mc.db"))
    await store.close()
    log_key = load_or_create_log_key(tmp_path / "log.key", "docs.test/log")
    app = create_app(str(tmp_path / "mc.db"), "s3cret", log_key.verifier)
    async with served(app) as base, offline_chromium(base) as chromium:
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(f"{base}/docs")
        await page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert "meterchain backend" in await page.inner_text(".swagger-ui .info .title")
        await page.wait_for_selector(".opblock", timeout=30_000)
        assert await page.locator(".opblock").count() > 20
        icon = await context.request.get(f"{base}/favicon.ico")
        assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert await page.get_attribute("link[rel*=icon]", "href") == "/favicon.svg"
        await page.screenshot(path=str(SCREENSHOTS / "api-docs-offline.png"))
    assert chromium.blocked == [], f"/docs asked the network for {chromium.blocked}"
