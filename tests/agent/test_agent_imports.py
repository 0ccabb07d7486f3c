"""What a gateway's process loads: `meterchain agent ...` must not pull the backend's web stack or
the HTTP client into a Pi Zero's memory (docs/benchmarks.md, "Gateway agent: resident memory").
httpx is loaded only when a receipt needs a consistency proof (agent/receipts.py), the meter emulators
only by tests, the demo and `meterchain emulate`."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("fastapi", "starlette", "uvicorn", "jinja2", "httpx", "asyncpg", "numpy", "meterchain.backend",
         "meterchain.bridge.modbus.emulator", "meterchain.bridge.dlms.emulator", "pymodbus.server")

PROBE = f"""
import json, sys
sys.argv = ["meterchain", "agent", "run", "--help"]
import meterchain.agent.service, meterchain.agent.receipts
from meterchain.cli import main
try:
    main.main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def test_the_agent_command_loads_no_web_stack_and_no_http_client() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
