"""/docs renders offline in a real browser: Swagger UI comes from this backend (the swagger-ui-py
package's dist files), every request off 127.0.0.1 is blocked, and the favicon is served."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import uvicorn
from meterchain.backend.api.app import create_app
from meterchain.backend.service import load_or_create_log_key
from meterchain.backend.store import open_store
from meterchain.mqtt.broker import free_port

CHROMIUM = os.environ.get("MC_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

try:
    from playwright.async_api import Route, async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(async_playwright is None, reason="browser tests need Playwright from PyPI"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"browser tests need Chromium at {CHROMIUM}"),
    pytest.mark.timeout(120),
]


async def test_docs_render_with_the_network_blocked(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "mc.db"))
    await store.close()
    log_key = load_or_create_log_key(tmp_path / "log.key", "docs.test/log")
    app = create_app(str(tmp_path / "mc.db"), "s3cret", log_key.verifier)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    blocked: list[str] = []

    async def only_local(route: Route) -> None:
        if route.request.url.startswith(base):
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            context = await browser.new_context(viewport={"width": 412, "height": 915})
            await context.route("**/*", only_local)
            page = await context.new_page()
            await page.goto(f"{base}/docs")
            await page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "meterchain backend" in await page.inner_text(".swagger-ui .info .title")
            await page.wait_for_selector(".opblock", timeout=30_000)
            assert await page.locator(".opblock").count() > 20
            icon = await context.request.get(f"{base}/favicon.ico")
            assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
            assert await page.get_attribute("link[rel*=icon]", "href") == "/favicon.svg"
            shots = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(shots / "api-docs-offline.png"))
            await browser.close()
        assert blocked == [], f"/docs asked the network for {blocked}"
    finally:
        server.should_exit = True
        await task
