"""schemathesis against the households' trading routes with real ids: the whole-API run
(test_api_schemathesis.py) reaches them only with made-up households, so here the path
parameters are a household and metering point of tests/support/market.py's auction week, probed
with the admin token and with the household's own key: no server error (5xx) anywhere."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from meterchain.backend.api.app import create_app

from tests.support.market import Market, build_market, close_market
from tests.support.utility import SCHEMATHESIS, serving

ROUTES = (r"^/api/v1/households/\{household\}/"
          r"(wallet|market|points|partners|ratings|profile)")


@pytest.mark.skipif(not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None,
                    reason="schemathesis is not installed (test extra)")
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_in_the_households_trading_routes(tmp_path: Path) -> None:
    async def build() -> Market:
        market = await build_market(tmp_path)
        await close_market(market)
        return market

    market = asyncio.run(build())
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\nhousehold = "h-1"\npoint = "mp-1"\n')
    command = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis"
    with serving(create_app(str(market.db), "s3cret", market.site.log_key.verifier)) as port:
        for token, seed in (("s3cret", "42"), (market.keys["h-1"], "7")):
            result = subprocess.run(
                [command, "--config-file", str(config), "run",
                 f"http://127.0.0.1:{port}/openapi.json", "--checks", "not_a_server_error",
                 "--max-examples", os.environ.get("MC_SCHEMATHESIS_EXAMPLES", "15"),
                 "--seed", seed, "-H", f"Authorization: Bearer {token}",
                 "--include-path-regex", ROUTES, "--wait-for-schema", "15",
                 "--request-timeout", "20", "--no-color"],
                capture_output=True, text=True, timeout=280, check=False)
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
            assert "12 selected" in result.stdout
