"""schemathesis against the whole running API, the admin routes included: no route answers a server
error (5xx), and every answer conforms to the OpenAPI description (status codes, content types,
response schemas, headers), refuses schema-invalid input and honours authentication.

That is ``--checks all`` but for ``positive_data_acceptance``: a request valid by the schema may still
break a rule the schema cannot express (an id that must exist, a start before an end, a listing that
may not reach into settled intervals), and such a request is rightly answered 400/404/409/422 with
an error body. The utilities' routes run with every check (tests/backend/utility/test_utility_schemathesis.py).
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
            [command, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
             "--exclude-checks", "positive_data_acceptance",
             "--max-examples", os.environ.get("MC_SCHEMATHESIS_EXAMPLES", "8"),
             "--seed", "42", "-H", f"Authorization: Bearer {ADMIN}", "--wait-for-schema", "15",
             "--request-timeout", "10", "--no-color"],
            capture_output=True, text=True, timeout=280, check=False)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
