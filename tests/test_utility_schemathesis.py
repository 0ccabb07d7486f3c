"""schemathesis (--checks all) against the running API: no server error, and every answer
conforms to the OpenAPI schema (integers bounded to 2^53 − 1, strict models, error bodies).
Seeded and bounded so it stays well under a minute."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from meterchain.backend.api import create_app
from meterchain.backend.broker import free_port
from test_utility_api import ADMIN, make_world

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
#: The utilities' own routes, each probed with the admin token and with a utility key.
UTILITY_ROUTES = r"^/(api/v1/(utility|webhooks|fleet|metering-points/\{point\}/ocmf|devices/\{device\}/ocmf)|fleet)"


@contextlib.contextmanager
def serving(app: object) -> Iterator[int]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 15
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


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
