"""The first hour with the product, on the demo itself: a household in a real browser, and the
README's commands run exactly as the README prints them.

One demo per module (``meterchain demo --history-days 2``: two days of history through the real
pipe, both communities settled), started in a directory laid out like a fresh clone (its own
``demo-data/``, ``.venv`` pointing at the project's), so the README's relative paths work as
written. The README's blocks marked ``<!-- demo: run -->`` are read from README.md and run with
bash; only the port is swapped for the test's. Screenshots of the demo's pages go to
tests/artifacts/screenshots/ on every run and to docs/screenshots/ (the README shows them) with
MC_UPDATE_SCREENSHOTS=1. Chromium is Debian's /usr/bin/chromium, never `playwright install`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from meterchain.mqtt.broker import free_port

from tests.support.browser import CHROMIUM, FLAGS, SCREENSHOTS
from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
RUN_MARK = "<!-- demo: run -->"
HISTORY_DAYS = 2  # CI's seed; the real demo signs 35 days

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]


@dataclass
class Demo:
    root: Path  # like a fresh clone: demo-data/ and .venv here
    port: int
    lines: list[str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.root / "demo-data"

    def password(self, household: str) -> str:
        for line in (self.data / "households.txt").read_text().splitlines():
            if line.startswith(household + " "):
                return line.split()[1]
        raise AssertionError(f"no login for {household}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    root = tmp_path_factory.mktemp("clone")
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
    running = Demo(root, port, lines)
    try:
        deadline = time.monotonic() + 480
        while not any("dashboard:" in line for line in lines):
            assert proc.poll() is None, "the demo stopped:\n" + "".join(lines)
            assert time.monotonic() < deadline, "no dashboard line in 480 s:\n" + "".join(lines)
            time.sleep(1)
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the demo did not stop within 150 s of Ctrl-C:\n"
                                 + "".join(lines)) from None
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)


# ------------------------------------------------------------------------------ the README


def readme_blocks() -> list[str]:
    """The README's shell blocks marked to run against the demo, in order."""
    text = README.read_text()
    blocks = re.findall(re.escape(RUN_MARK) + r"\s*```sh\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4, "the README lost its demo command blocks"
    return blocks


def test_the_readme_speaks_of_the_demo_as_it_is() -> None:
    """Ports, household and device ids and the command path in the README are the demo's."""
    from meterchain.cli.demo import HOUSEHOLDS

    text = README.read_text()
    blocks = "\n".join(readme_blocks())
    assert set(re.findall(r"http://127\.0\.0\.1:(\d+)", blocks)) == {"8000"}
    assert "127.0.0.1:8080" not in text and "<backend>:8080" not in text  # the demo is on 8000
    households = {h.id for h in HOUSEHOLDS}
    assert set(re.findall(r"household-\d+", text)) <= households
    devices = {h.device for h in HOUSEHOLDS}
    assert set(re.findall(r"\bgw-\d{4}\b", text)) <= devices
    for block in readme_blocks():
        for command in re.findall(r"^\s*(\S*meterchain) ", block, flags=re.M):
            assert command == ".venv/bin/meterchain", f"a newcomer has no bare {command!r}"
        assert not re.search(r">\s*(?!demo-data/)[\w.-]+\.(pub|tlog-proof|toml|json)\b", block), \
            "a README command writes a file outside demo-data/ (the repository root)"


def test_the_readmes_commands_run_against_the_demo(demo: Demo) -> None:
    for block in readme_blocks():
        script = block.replace("127.0.0.1:8000", f"127.0.0.1:{demo.port}")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=demo.root,
                                capture_output=True, text=True, timeout=240)
        if "agent check" in block:
            assert "logged at position" in result.stdout, result.stdout
            if result.returncode:  # a machine without NTP: the README says so
                failed = re.findall(r"\[FAIL\] (\w+)", result.stdout)
                assert failed == ["clock"], result.stdout
                continue
        assert result.returncode == 0, f"{block}\n--- stdout\n{result.stdout}\n--- stderr\n" \
                                       f"{result.stderr}"
        if "meterchain verify" in block:
            assert "verified: reading gw-0001#" in result.stdout
        if "--policy" in block:  # the consortium's quorum was required, and met
            assert "ok   witnesses" in result.stdout
            assert "2 of stadtwerke, netz, regulator" in " ".join(result.stdout.split())  # rich wraps
        if "agent provision" in block:  # provisioning hands out the backend's witness policy
            assert "witness_policy" in (demo.data / "installer" / "agent.toml").read_text()
    assert not list(demo.root.glob("*.tlog-proof")) and not list(demo.root.glob("*.pub"))


# ------------------------------------------------------------------------------ a household


@pytest.mark.skipif(sync_playwright is None, reason="browser tests need Playwright from PyPI "
                    "(pip install playwright); never `playwright install`: Debian's chromium")
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get "
                    "install chromium; .ci/run does it), or MC_CHROMIUM=/path/to/chromium")
@pytest.mark.timeout(600)
def test_a_household_meets_its_month_its_bill_and_its_proofs(demo: Demo, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    household, base = "household-2", demo.base  # the PV household: bars up and down
    timeline = json.loads((demo.data / "timeline.json").read_text())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 412, "height": 915},
                                      device_scale_factor=1, accept_downloads=True)
        page = context.new_page()
        page.goto(f"{base}/")
        assert page.url == f"{base}/login"
        page.screenshot(path=str(SCREENSHOTS / "demo-sign-in.png"))
        page.fill("input[name=username]", household)
        page.fill("input[name=password]", demo.password(household))
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(rf"{base}/households/{household}"))

        # the default page is never empty: a day with measured quarter hours
        chart = page.locator("#point-mp-2 svg.chart")
        measured = chart.locator("g.slot:not(.missing):not(.future)")
        assert measured.count() >= 24  # today from 6 hours of data on, yesterday before
        assert "no data for this period" not in chart.inner_html()
        page.screenshot(path=str(SCREENSHOTS / "demo-day.png"), full_page=True)

        # the month: a bar for every day of the history, the days before it visibly no data
        page.click("nav.periods >> text=month")
        month = page.locator("#point-mp-2 svg.chart")
        days_with_data = month.locator("g.slot:not(.missing):not(.future)").count()
        assert days_with_data >= HISTORY_DAYS
        first = dt.datetime.fromtimestamp(timeline["origin"]).astimezone()
        if first.day > 1:  # history began inside this month: earlier days are gaps, not zeros
            assert month.locator("g.slot.missing rect.gap").count() >= 1
        page.screenshot(path=str(SCREENSHOTS / "demo-month.png"), full_page=True)

        # a day before the demo existed: "no data", never 0.000 kWh
        before = (dt.datetime.fromtimestamp(timeline["origin"] - 86_400)).date().isoformat()
        page.goto(f"{base}/households/{household}/day/{before}")
        totals = page.inner_text("#point-mp-2 .totals")
        assert "no data" in totals and "0.000 kWh" not in totals
        assert "no data for this period" in page.locator("#point-mp-2 svg.chart").inner_html()
        page.screenshot(path=str(SCREENSHOTS / "demo-no-data.png"), full_page=True)

        # the bill: every line's exact amount adds up to the total; trades and a share exist
        page.goto(f"{base}/households/{household}/bill")
        amounts = page.locator("#bill tr.line").evaluate_all(
            "rows => rows.map(r => Number(r.dataset.amount))")
        total = int(page.locator("#bill").get_attribute("data-total") or "x")
        assert len(amounts) >= 5 and sum(amounts) == total
        assert page.locator("#trades tbody tr").count() > 0
        assert "No local trades" not in page.inner_text("#trades")
        page.screenshot(path=str(SCREENSHOTS / "demo-bill.png"))  # the lines; trades go on

        # a bar of the day chart, followed to its proof; the bundle verifies offline
        page.go_back()
        page.goto(f"{base}/households/{household}")
        bar = page.locator("#point-mp-2 svg.chart g.slot a").nth(3)
        bar.click()
        page.wait_for_url(re.compile(r".*/points/mp-2/readings/gw-0002/\d+$"))
        statement = page.inner_text("#statement")
        assert "Signed by gateway gw-0002 for meter 21000002" in statement
        # the consortium (issue 17): the page required the quorum and names who cosigned
        witnesses = " ".join(page.inner_text("#witnesses").split())
        named = re.search(r"Cosigned by the witnesses (.+) \(the log's witness policy requires "
                          r"2 of stadtwerke, netz, regulator\)", witnesses)
        assert named is not None, witnesses
        assert len(set(named.group(1).split(", ")) & {"stadtwerke", "netz", "regulator"}) >= 2
        page.screenshot(path=str(SCREENSHOTS / "demo-verify.png"), full_page=True)
        with page.expect_download() as info:
            page.click("#bundle")
        bundle = tmp_path / info.value.suggested_filename
        info.value.save_as(bundle)
        verified = subprocess.run(
            [sys.executable, "-m", "meterchain.cli.main", "verify", str(bundle), "--log-key",
             str(demo.data / "log.pub"), "--policy", str(demo.data / "witnesses.policy")],
            capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "verified: reading gw-0002#" in verified.stdout and "ok   witnesses" in verified.stdout
        browser.close()


def test_the_demo_screenshots_the_readme_links_exist_and_stay_small() -> None:
    text = README.read_text()
    linked = set(re.findall(r"docs/screenshots/(demo-[\w-]+\.png)", text))
    assert linked >= {"demo-day.png", "demo-month.png", "demo-bill.png", "demo-verify.png",
                      "demo-no-data.png", "demo-sign-in.png"}
    for name in linked:
        shot = REPO_ROOT / "docs" / "screenshots" / name
        assert shot.exists() and shot.stat().st_size < 400_000, name


def test_counts_agree_across_pages(demo: Demo) -> None:
    """My data's reading count = the export's readings = the quarter hours of the CSVs plus one
    baseline reading per meter; the month page's total = the sum of its CSV."""
    import csv
    import io

    import httpx

    household = "household-3"  # two meters: house and heat pump
    with httpx.Client(base_url=demo.base, follow_redirects=True, timeout=30) as web:
        web.post("/login", data={"username": household, "password": demo.password(household)})
        page = web.get(f"/households/{household}/data").text
        shown = int(re.search(r"your (\d+) stored readings", page).group(1))  # type: ignore[union-attr]
        export = web.get(f"/households/{household}/export.json").json()
        readings = [r for p in export["metering_points"] for r in p["readings"]]
        assert shown == len(readings) > 2 * 96
        meters = {(r["device"], r["meter"]) for r in readings}
        zone = ZoneInfo(export["household"]["timezone"])  # the pages' months are the household's
        months = sorted({dt.datetime.fromtimestamp(r["end"] - 1, zone).strftime("%Y-%m")
                         for r in readings})
        rows = []
        for month in months:
            text = web.get(f"/households/{household}/intervals/month/{month}.csv").text
            rows += list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(readings) - len(meters)
        month = months[-1]
        html = web.get(f"/households/{household}/month/{month}").text
        total = sum(int(r["import_wh"]) for r in rows if r["metering_point"] == "mp-3"
                    and dt.datetime.fromisoformat(r["interval_start_local"]).strftime("%Y-%m")
                    == month)
        section = html[html.index('id="point-mp-3"'):]
        shown_kwh = re.search(r"consumption <strong>([\d,]+\.\d{3}) kWh", section)
        assert shown_kwh is not None
        assert round(float(shown_kwh.group(1).replace(",", "")) * 1000) == total
