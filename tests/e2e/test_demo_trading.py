"""The households' trading pages on the demo itself (issue 16 on issue 15's demo): the demo (two
days of history, like tests/e2e/test_demo_journey.py) settles lindenhof by call auctions with
standing listings; its PV household sees the market's prices and its listing, previews a new
ask, and its wallet's statement names settlement digests that `meterchain settle --verify`
re-derives from the signed readings; its neighbour sees it only as "a neighbour" to rate and
cannot open its conditions."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meterchain.mqtt.broker import free_port

from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(900)
HISTORY_DAYS = 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("demo")
    (root / ".venv").symlink_to(REPO_ROOT / ".venv")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterchain.cli.main", "demo", "--history-days", str(HISTORY_DAYS),
         "--http-port", str(port)],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 480
        while not any("dashboard:" in line for line in lines):
            assert proc.poll() is None, "the demo stopped:\n" + "".join(lines)
            assert time.monotonic() < deadline, "no dashboard line in 480 s:\n" + "".join(lines)
            time.sleep(1)
        yield root / "demo-data", f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
        reader.join(timeout=10)


@contextlib.contextmanager
def _client(data: Path, base: str, household: str) -> Iterator[httpx.Client]:
    """A signed-in session of ``household`` (its password from the demo's households.txt)."""
    password = next(line.split()[1] for line in (data / "households.txt").read_text().splitlines()
                    if line.startswith(household + " "))
    with httpx.Client(base_url=base, follow_redirects=True, timeout=60) as web:
        answer = web.post("/login", data={"username": household, "password": password})
        assert answer.status_code == 200
        yield web


def test_the_auction_households_trade_on_the_demo(demo: tuple[Path, str]) -> None:
    data, base = demo
    with _client(data, base, "household-4") as seller:
        market = seller.get("/households/household-4/market").text
        assert "Market of lindenhof" in market
        assert 'id="p-f" data-price="82000"' in market and 'id="p-g" data-price="320000"' in market
        days = re.findall(r'<g class="day" data-day="([0-9-]+)" data-price="(\d+)"', market)
        assert days and all(82_000 <= int(p) <= 320_000 for _, p in days)
        assert not re.search(r"mp-5|household-5", market)

        conditions = seller.get("/households/household-4/conditions").text
        assert "sell locally only at <strong>0.140 €/kWh</strong>" in conditions
        preview = seller.post("/households/household-4/conditions", data={
            "point": "mp-4", "sell_ask": "0.10", "green_source": "on", "action": "preview"}).text
        assert "you would have sold" in preview
        assert int(re.search(r'data-intervals="(\d+)"', preview).group(1)) > 96  # type: ignore[union-attr]

        wallet = seller.get("/households/household-4/wallet").text
        balance = int(re.search(r'data-balance="(-?\d+)"', wallet).group(1))  # type: ignore[union-attr]
        months = re.findall(r"/wallet/statement/(\d{4}-\d\d)\.csv", wallet)
        closing, lines = None, []
        for month in sorted(months):
            rows = list(csv.DictReader(io.StringIO(
                seller.get(f"/households/household-4/wallet/statement/{month}.csv").text)))
            closing = int(rows[-1]["balance_micro_eur"])
            lines += [r for r in rows if r["source"] == "interval" and r["leaf_index"]]
        assert closing == balance and lines
        sold = [r for r in lines if r["line"] == "local_energy_sold"]
        assert sold, "the PV household sold to its neighbour"

    # the statement's line is checkable from the signed readings and the public log
    line = sold[len(sold) // 2]
    verify = subprocess.run(
        [sys.executable, "-m", "meterchain.cli.main", "settle", "--verify", "--db",
         str(data / "backend.sqlite"), "--community", "lindenhof", "--interval",
         line["interval_start_utc"], "--revision", line["revision"], "--log-key",
         str(data / "log.pub")], capture_output=True, text=True, timeout=120, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "equals the logged digest" in verify.stdout

    with _client(data, base, "household-5") as buyer:
        partners = buyer.get("/households/household-5/ratings").text
        assert "a neighbour" in partners and "household-4" not in partners.split("<main>")[1]
        for url in ("/households/household-4/conditions", "/households/household-4/wallet"):
            assert buyer.get(url).status_code == 404
