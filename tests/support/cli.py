"""Shared by several test modules (moved here from test_installer_agent.py, so no test imports another)."""

from __future__ import annotations

import asyncio
import os
import sys
import time


async def run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterchain.cli.main", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def run_timed(*args: str, after: str) -> tuple[int, str, float]:
    """Like ``run``, and the seconds from the output's first line holding ``after`` to the exit.

    A CLI's own work is timed from a line it prints once imported, never from the process's
    start: importing the CLI alone takes over 10 s on a loaded machine.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterchain.cli.main", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    lines: list[bytes] = []
    began: float | None = None
    while line := await process.stdout.readline():
        lines.append(line)
        if began is None and after in line.decode(errors="replace"):
            began = time.monotonic()
    code = await process.wait()
    ended = time.monotonic()
    out = b"".join(lines).decode()
    assert began is not None, f"the output never said {after!r}:\n{out}"
    return code or 0, out, ended - began
