"""schemathesis (--checks all) against the running API: no server error, and every answer
conforms to the OpenAPI schema (integers bounded to 2^53 − 1, strict models, error bodies).
Seeded and bounded so it stays well under a minute."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from meterchain.backend.api.app import create_app

from tests.support.utility import ADMIN, SCHEMATHESIS, make_world, serving

#: The utilities' own routes, each probed with the admin token and with a utility key.
UTILITY_ROUTES = r"^/(api/v1/(utility|webhooks|fleet|metering-points/\{point\}/ocmf|devices/\{device\}/ocmf)|fleet)"


@pytest.mark.skipif(not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None,
                    reason="schemathesis is not installed (test extra)")
@pytest.mark.timeout(180)
def test_schemathesis_finds_no_server_error_on_the_utility_routes(tmp_path: Path) -> None:
    world = asyncio.run(make_world(tmp_path, rounds=3))
    with serving(create_app(str(world.db), ADMIN, world.log_key.verifier)) as port:
        command = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis"
        for token in (ADMIN, world.tokens["u1"]):
            result = subprocess.run(
                [command, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
                 "--max-examples", os.environ.get("MC_SCHEMATHESIS_EXAMPLES", "25"),
                 "--seed", "42", "--include-path-regex", UTILITY_ROUTES,
                 "-H", f"Authorization: Bearer {token}", "--wait-for-schema", "15",
                 "--request-timeout", "10", "--no-color"],
                capture_output=True, text=True, timeout=150, check=False)
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
