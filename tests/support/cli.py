"""Shared by several test modules (moved here from test_installer_agent.py, so no test imports another)."""

from __future__ import annotations

import asyncio
import sys


async def run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterchain.cli.main", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()
