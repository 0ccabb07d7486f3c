"""schemathesis against the whole running API: no route answers a server error (5xx).

The utilities' routes also run with ``--checks all`` (tests/backend/utility/test_utility_schemathesis.py); here
every route is probed, with the admin token, for the one property every route owes its callers.
Seeded and bounded (MC_SCHEMATHESIS_EXAMPLES, default 8)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from meterchain.backend.api.app import create_app

from tests.support.utility import ADMIN, SCHEMATHESIS, make_world, serving


@pytest.mark.skipif(not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None,
                    reason="schemathesis is not installed (test extra)")
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_anywhere(tmp_path: Path) -> None:
    world = asyncio.run(make_world(tmp_path, rounds=2))
    with serving(create_app(str(world.db), ADMIN, world.log_key.verifier)) as port:
        command = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis"
        result = subprocess.run(
            [command, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", os.environ.get("MC_SCHEMATHESIS_EXAMPLES", "8"),
             "--seed", "42", "-H", f"Authorization: Bearer {ADMIN}", "--wait-for-schema", "15",
             "--request-timeout", "10", "--no-color"],
            capture_output=True, text=True, timeout=280, check=False)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
