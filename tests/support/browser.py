"""The one way browser tests start Chromium: Debian's /usr/bin/chromium (never `playwright install`),
headless, driven by Playwright, with every request that leaves the app under test blocked and
recorded, so a page that silently fetches from the internet fails its test.

`served(app)` runs an ASGI app on a free loopback port; `offline_chromium(base)` launches the
browser and hands out contexts that may only reach `base`; `needs_chromium(timeout)` is the
pytest marks that skip without Playwright or Chromium. Screenshots go to tests/artifacts/
(git-ignored) on every run, to docs/screenshots/ (the README shows those) with
MC_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from meterchain.mqtt.broker import free_port

from tests.support.paths import REPO_ROOT, TESTS_ROOT

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Route
    from starlette.types import ASGIApp

CHROMIUM = os.environ.get("MC_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PHONE = {"width": 412, "height": 915}
SCREENSHOTS = (REPO_ROOT / "docs" / "screenshots" if os.environ.get("MC_UPDATE_SCREENSHOTS") == "1"
               else TESTS_ROOT / "artifacts" / "screenshots")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None


def needs_chromium(timeout: int) -> list[pytest.MarkDecorator]:
    """Marks for a browser test: skip without Playwright or Chromium, and a time limit."""
    return [
        pytest.mark.skipif(not HAVE_PLAYWRIGHT,
                           reason="browser tests need Playwright from PyPI (pip install playwright); "
                                  "never `playwright install`: they use Debian's chromium"),
        pytest.mark.skipif(not Path(CHROMIUM).exists(),
                           reason=f"browser tests need Chromium at {CHROMIUM} (apt-get install "
                                  "chromium; .ci/run does it), or MC_CHROMIUM=/path/to/chromium"),
        pytest.mark.timeout(timeout),
    ]


@asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port while the block runs; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():  # it could not start: raise its error rather than wait forever
                await task
                raise RuntimeError(f"uvicorn stopped before it served on port {port}")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class OfflineChromium:
    """A launched Chromium whose contexts reach ``base`` only; ``blocked`` lists what else was asked."""

    browser: Browser
    base: str
    blocked: list[str] = field(default_factory=list)

    async def _only_local(self, route: Route) -> None:
        if route.request.url.startswith(self.base):
            await route.continue_()
        else:
            self.blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    async def new_context(self, **options: Any) -> BrowserContext:
        """A fresh context (a phone-sized screen unless ``viewport`` is given) with the network blocked."""
        options.setdefault("viewport", PHONE)
        context = await self.browser.new_context(**options)
        await context.route("**/*", self._only_local)
        return context


@asynccontextmanager
async def offline_chromium(base: str) -> AsyncIterator[OfflineChromium]:
    """Chromium launched headless for the block, every request off ``base`` blocked; afterwards
    the caller asserts ``blocked == []`` (the block's own failure comes first that way)."""
    from playwright.async_api import async_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield OfflineChromium(browser, base)
        finally:
            await browser.close()
