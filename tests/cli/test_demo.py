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

import httpx
import pytest
from meterchain.backend.store import open_store
from meterchain.mqtt.broker import free_port

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
        # The households' dashboard: sign in with the demo's credentials, no browser.
        logins = workdir / "households.txt"
        assert logins.stat().st_mode & 0o777 == 0o600
        password = next(line.split()[1] for line in logins.read_text().splitlines()
                        if line.startswith("household-1 "))
        with httpx.Client(base_url=base, follow_redirects=True, timeout=10) as web:
            assert web.get("/").url.path == "/login"
            day = web.post("/login", data={"username": "household-1", "password": password})
            assert day.status_code == 200 and day.url.path == "/households/household-1"
            assert "21000001" in day.text and "gw-0001" in day.text
            assert "21000002" not in day.text  # another household's meter
    finally:
        proc.send_signal(2)  # Ctrl-C
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "demo stopped" in out
    assert f"dashboard: {base}/  sign in as household-1 / {password}" in out

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


async def test_demo_households_survive_a_rerun_with_the_same_dir(tmp_path: Path) -> None:
    from meterchain.backend.access.tables import PartyTables
    from meterchain.backend.web import accounts
    from meterchain.backend.web.tables import WebTables
    from meterchain.cli.demo import _households

    db, logins = str(tmp_path / "backend.sqlite"), tmp_path / "households.txt"
    first = await _households(db, ["gw-0001", "gw-0002"], logins)
    again = await _households(db, ["gw-0001", "gw-0002"], logins)
    assert first == again and set(first) == {"household-1", "household-2"}
    store = await open_store(db)
    try:
        bindings = await PartyTables(store).meter_bindings("mp-2")
        assert [(b.device, b.meter) for b in bindings] == [("gw-0002", "21000002")]
        login = await WebTables(store).login("household-2")
        assert login is not None and accounts.verify_password(first["household-2"], login.password_hash)[0]
    finally:
        await store.close()
