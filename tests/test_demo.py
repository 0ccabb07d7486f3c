"""The Quick start demo: broker, backend, emulated meters and agents, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from meterchain.backend.broker import free_port
from meterchain.backend.store import open_store

METERCHAIN = [sys.executable, "-m", "meterchain.cli.main"]


def _get(url: str, token: str | None = None) -> bytes:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


@pytest.mark.timeout(120)
def test_demo_runs_the_pipe_and_a_fetched_bundle_verifies(tmp_path: Path) -> None:
    workdir, port = tmp_path / "demo", free_port()
    proc = subprocess.Popen(
        [*METERCHAIN, "demo", "--dir", str(workdir), "--interval", "2", "--http-port", str(port), "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/v1"
    try:
        deadline = time.monotonic() + 45
        bundle = b""
        while time.monotonic() < deadline:
            time.sleep(1)
            token_file = workdir / "admin-token"
            if not token_file.exists():
                continue
            try:
                bundle = _get(f"{api}/devices/gw-0003/readings/2/bundle", token_file.read_text().strip())
                break
            except OSError:
                continue
        assert bundle.startswith(b"c2sp.org/tlog-proof@v1\n"), "no bundle within 45 s"
        (tmp_path / "r.tlog-proof").write_bytes(bundle)
        verify = subprocess.run(
            [*METERCHAIN, "verify", str(tmp_path / "r.tlog-proof"), "--log-key", str(workdir / "log.pub")],
            capture_output=True, text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "verified: reading gw-0003#2" in verify.stdout
        assert json.loads(_get(f"{base}/healthz"))
    finally:
        proc.send_signal(2)  # Ctrl-C
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "demo stopped" in out

    async def check_store() -> None:
        store = await open_store(str(workdir / "backend.sqlite"))
        try:
            for device in ("gw-0001", "gw-0002", "gw-0003"):
                rows = await store.readings(device, 0, 2**53 - 1, 10_000)
                seqs = [r.seq for r in rows]
                assert seqs == list(range(1, len(seqs) + 1)), f"{device}: gaps or repeats {seqs}"
                assert len(seqs) >= 2
                assert all(r.leaf_index is not None for r in rows), "stopping seals everything pending"
        finally:
            await store.close()

    asyncio.run(check_store())
