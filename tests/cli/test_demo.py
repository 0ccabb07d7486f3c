"""The Quick start demo: broker, backend, emulated meters and agents, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from meterchain.agent.config import load_config
from meterchain.backend.store import open_store
from meterchain.contract.tlog_policy import parse_policy
from meterchain.mqtt.broker import free_port

METERCHAIN = [sys.executable, "-m", "meterchain.cli.main"]
HOUSE_METERS = {"gw-0001": ["21000001"], "gw-0002": ["21000002"],
                "gw-0003": ["21000003", "22000003"], "gw-0004": ["21000004", "22000004"],
                "gw-0005": ["21000005"]}


def _get(url: str, token: str | None = None) -> bytes:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


@pytest.mark.timeout(300)
def test_demo_signs_a_day_of_history_through_the_pipe_then_runs_live(tmp_path: Path) -> None:
    """One day of history (96 quarter hours per meter) on the 15-minute grid, none in the future,
    every reading sealed; a fetched bundle verifies; a household signs in and sees its day."""
    workdir, port = tmp_path / "demo", free_port()
    started = time.time()
    proc = subprocess.Popen(
        [*METERCHAIN, "demo", "--dir", str(workdir), "--history-days", "1", "--http-port",
         str(port), "--duration", "240"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/v1"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    password = ""
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any("dashboard:" in x for x in lines):
            time.sleep(1)  # printed when the history is in and the agents run live
        assert any("dashboard:" in x for x in lines), "no history within 240 s:\n" + "".join(lines)
        token = (workdir / "admin-token").read_text().strip()
        bundle = _get(f"{api}/devices/gw-0003/readings/2/bundle", token)
        assert bundle.startswith(b"c2sp.org/tlog-proof@v1\n")
        (tmp_path / "r.tlog-proof").write_bytes(bundle)
        verify = subprocess.run(
            [*METERCHAIN, "verify", str(tmp_path / "r.tlog-proof"), "--log-key",
             str(workdir / "log.pub")], capture_output=True, text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "verified: reading gw-0003#2" in verify.stdout
        # The consortium (issue 17): the checkpoint is cosigned by 2 or 3 of the demo's witnesses,
        # and the gateways check receipts under the same policy.
        policy = workdir / "witnesses.policy"
        verify = subprocess.run(
            [*METERCHAIN, "verify", str(tmp_path / "r.tlog-proof"), "--log-key",
             str(workdir / "log.pub"), "--policy", str(policy)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        named = re.search(r"witnesses: (.+) cosigned \(policy: 2 of stadtwerke, netz, regulator\)",
                          " ".join(verify.stdout.split()))
        assert named is not None, verify.stdout
        assert len(set(named.group(1).split(", ")) & {"stadtwerke", "netz", "regulator"}) >= 2
        assert "ok   witnesses" in verify.stdout
        gateway = load_config(workdir / "gw-0001.toml")
        assert gateway.witness_policy is not None
        assert parse_policy(gateway.witness_policy) == parse_policy(policy.read_text())
        assert httpx.get(f"{api}/log/witness-policy").text == parse_policy(policy.read_text()).to_text()
        assert json.loads(_get(f"{base}/healthz"))
        logins = workdir / "households.txt"
        for secret in (logins, workdir / "admin-token", workdir / "backend.sqlite",
                       workdir / "gw-0001.key", workdir / "utility-key",
                       workdir / "installer-token", workdir / "backend.toml"):
            assert secret.stat().st_mode & 0o777 == 0o600, secret
        password = next(line.split()[1] for line in logins.read_text().splitlines()
                        if line.startswith("household-3 "))
        # The operator's setup: terms for both communities, settled history, a utility key and
        # an installer token (provisioning on).
        admin = {"Authorization": f"Bearer {token}"}
        for community, market in (("sonnenweg", "prorata"), ("lindenhof", "auction")):
            (terms,) = json.loads(_get(f"{api}/communities/{community}/terms", token))
            assert terms["market"] == market
            settled = json.loads(_get(f"{api}/communities/{community}/intervals?limit=10000",
                                      token))
            assert len(settled) >= 90 and {i["mode"] for i in settled} >= {market}
        assert len(json.loads(_get(f"{api}/communities/lindenhof/listings", token))) == 3
        utility = (workdir / "utility-key").read_text().strip()
        assert json.loads(_get(f"{api}/whoami", utility))["kind"] == "utility"
        assert (workdir / "installer-token").read_text().startswith("mct_")
        assert (workdir / "extra-meter").read_text().startswith("/dev/pts/")
        assert httpx.get(f"{api}/keys", headers=admin).status_code == 200
        with httpx.Client(base_url=base, follow_redirects=True, timeout=10) as web:
            assert web.get("/").url.path == "/login"
            day = web.post("/login", data={"username": "household-3", "password": password})
            assert day.status_code == 200 and day.url.path == "/households/household-3"
            assert "22000003" in day.text and "gw-0003" in day.text
            assert "21000002" not in day.text  # another household's meter
    finally:
        proc.send_signal(2)  # Ctrl-C
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "demo stopped" in out and "quarter hours per meter" in out
    assert f"dashboard: {base}/  sign in as household-1 /" in out
    for user in ("households", "operator", "utility", "installer", "consortium"):
        assert f"\n{user}" in out, f"no line for the {user}"

    async def check_store() -> None:
        store = await open_store(str(workdir / "backend.sqlite"))
        try:
            for device, meters in HOUSE_METERS.items():
                rows = await store.readings(device, 0, 2**53 - 1, 10_000)
                seqs = [r.seq for r in rows]
                assert seqs == list(range(1, len(seqs) + 1)), f"{device}: gaps or repeats"
                assert all(r.leaf_index is not None for r in rows), "stopping seals everything"
                for meter in meters:
                    ends = sorted(r.end for r in rows if r.meter == meter)
                    assert len(ends) >= 95, f"{device}/{meter}: {len(ends)} readings, not a day"
                    assert all(e % 900 == 0 for e in ends), "off the 15-minute grid"
                    assert ends == sorted(set(ends)), "an interval signed twice"
                    assert ends[0] <= started - 86_400 + 1800
                    assert ends[-1] <= time.time(), "a reading dated in the future"
        finally:
            await store.close()

    asyncio.run(check_store())

    # A re-run continues the same log: the meters' registers go on from the same origin, so no
    # reading is refused and nothing is excluded from settlement as running backwards.
    again = subprocess.run(
        [*METERCHAIN, "demo", "--dir", str(workdir), "--http-port", str(port), "--duration", "5"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "200"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert "demo stopped" in again.stdout
    asyncio.run(check_store())

    async def no_exclusions() -> None:
        store = await open_store(str(workdir / "backend.sqlite"))
        try:
            async with store.connection.execute(  # type: ignore[attr-defined]
                    "SELECT reason, detail FROM settlement_exclusions") as cursor:
                assert list(await cursor.fetchall()) == []
        finally:
            await store.close()

    asyncio.run(no_exclusions())


def test_a_taken_port_is_refused_with_the_fix_before_anything_is_created(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*METERCHAIN, "demo", "--dir", str(tmp_path / "d"), "--http-port", str(port)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )
    assert result.returncode == 2
    assert f"port {port}" in result.stdout and "--http-port" in result.stdout
    assert not (tmp_path / "d").exists()


def test_emulated_energy_matches_the_power_the_meter_reports() -> None:
    """A quarter hour at the demo's clock: Wh = mean W × 0.25 h (it was 160 Wh per 10 s at 300 W)."""
    from meterchain.bridge.modbus import EmulatedMeter
    from meterchain.cli.demo import HOUSEHOLDS

    t = [1_767_225_600.0]
    for household in HOUSEHOLDS:
        for m in household.meters:
            meter = EmulatedMeter("sdm630", m.modbus_id, 9600, m.serial, m.profile, lambda: t[0])
            before = meter.state.import_j - meter.state.export_j
            powers = []
            for _ in range(15):
                powers.append(meter.state.values(int(t[0]))["power_total"])
                t[0] += 60
            meter.state.advance(int(t[0]))
            energy_wh = (meter.state.import_j - meter.state.export_j - before) / 3600
            assert energy_wh == pytest.approx(sum(powers) / len(powers) / 4, abs=1)
            t[0] -= 900


async def test_demo_households_survive_a_rerun_with_the_same_dir(tmp_path: Path) -> None:
    from meterchain.backend.access.tables import PartyTables
    from meterchain.backend.web import accounts
    from meterchain.backend.web.tables import WebTables
    from meterchain.cli.demo import HOUSEHOLDS, _households

    db, logins = str(tmp_path / "backend.sqlite"), tmp_path / "households.txt"
    first = await _households(db, HOUSEHOLDS, logins, since=1_000)
    again = await _households(db, HOUSEHOLDS, logins, since=1_000)
    assert first == again and set(first) == {f"household-{i}" for i in range(1, 6)}
    store = await open_store(db)
    try:
        parties = PartyTables(store)
        bindings = await parties.meter_bindings("mp-3-hp")
        assert [(b.device, b.meter) for b in bindings] == [("gw-0003", "22000003")]
        login = await WebTables(store).login("household-2")
        assert login is not None and accounts.verify_password(first["household-2"],
                                                              login.password_hash)[0]
    finally:
        await store.close()


@pytest.mark.timeout(180)
def test_ctrl_c_during_the_history_stops_everything(tmp_path: Path) -> None:
    """Ctrl-C while the history is signed stops the demo, its backend and broker promptly."""
    workdir, port = tmp_path / "demo", free_port()
    proc = subprocess.Popen(
        [*METERCHAIN, "demo", "--dir", str(workdir), "--history-days", "3", "--http-port",
         str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(line.startswith("history ") for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(2)
    began = time.monotonic()
    proc.wait(timeout=90)
    reader.join(timeout=10)
    assert proc.returncode == 0 and "demo stopped" in "".join(lines), "".join(lines)
    assert time.monotonic() - began < 60
    def cmdline(pid: Path) -> str:
        try:
            return (pid / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile
            return ""

    leftovers = [p.name for p in Path("/proc").iterdir()
                 if p.name.isdigit() and str(workdir) in cmdline(p)]
    assert leftovers == [], "a broker or backend outlived the demo"


@pytest.mark.timeout(180)
def test_a_killed_demo_takes_its_backend_with_it(tmp_path: Path) -> None:
    """SIGKILL leaves no cleanup to the demo: the backend and the witnesses (their own sessions)
    still go."""
    workdir, port = tmp_path / "demo", free_port()
    proc = subprocess.Popen(
        [*METERCHAIN, "demo", "--dir", str(workdir), "--history-days", "1", "--http-port",
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (workdir / "control.key").exists():  # the backend's sealer made it: all are up
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.5)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while True:
        backends = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
                    and ("backend.toml" in _cmdline(p) or "witness.toml" in _cmdline(p))
                    and str(workdir) in _cmdline(p)]
        if not backends or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for pid in backends:  # clean up before failing
        os.kill(int(pid), 9)
    for p in Path("/proc").iterdir():  # the broker is the demo's child: not in scope here
        if p.name.isdigit() and str(workdir) in _cmdline(p) and "mosquitto" in _cmdline(p):
            os.kill(int(p.name), 15)
    assert backends == [], "the backend or a witness outlived a killed demo"


def _cmdline(pid: Path) -> str:
    try:
        return (pid / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""
