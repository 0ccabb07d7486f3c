"""The household dashboard over HTTP (no browser): sign-in, sessions, isolation, charts, proofs,
bills, exports, admin links. The browser tests (test_web_browser.py) drive the same scenario."""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path

import pytest
from meterchain.backend.api.app import create_app
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.telemetry import Telemetry

from tests.support.humantime import assert_no_unix_seconds
from tests.support.web import NOW, PASSWORDS, Scenario, build

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ADMIN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    import asyncio

    return asyncio.run(build(tmp_path_factory.mktemp("web")))


def client(scenario: Scenario) -> TestClient:
    app = create_app(str(scenario.db), "s3cret", scenario.log_key.verifier)  # type: ignore[attr-defined]
    app.state.web.clock = lambda: NOW
    app.state.web.settlements = scenario.settlements
    return TestClient(app)


def sign_in(http: TestClient, user: str) -> None:
    answer = http.post("/login", data={"username": user, "password": PASSWORDS[user]},
                       follow_redirects=False)
    assert answer.status_code == 303, answer.text


def test_sign_in_sessions_and_isolation(scenario: Scenario) -> None:
    with client(scenario) as http:
        assert http.get("/households/h-alice", follow_redirects=False).headers["location"] == "/login"
        wrong = http.post("/login", data={"username": "alice", "password": "not-it-at-all"})
        assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        unknown = http.post("/login", data={"username": "mallory", "password": "whatever-123"})
        assert unknown.status_code == 401
        sign_in(http, "alice")
        cookie = http.cookies.get("mc_session")
        assert cookie and "h-alice" not in cookie
        assert http.get("/", follow_redirects=False).headers["location"] == "/households/h-alice"
        page = http.get("/households/h-alice")
        assert page.status_code == 200 and "Alice&#39;s house" in page.text
        # another household, its point, its reading and its bundle: all answered like unknown ones
        for url in ("/households/h-bob", "/households/h-bob/day/2024-03-31",
                    "/households/h-bob/bill/2024-03", "/households/h-bob/export.json",
                    "/households/h-alice/points/mp-bob-house/day/2024-03-31",
                    "/households/h-alice/points/mp-bob-house/readings/gw-bob/5",
                    "/households/h-alice/points/mp-alice-house/readings/gw-bob/5/bundle",
                    "/households/h-nobody"):
            answer = http.get(url)
            assert answer.status_code == 404, url
            assert "Bob" not in answer.text and "gw-bob" not in answer.text
        http.post("/logout")
        assert http.get("/households/h-alice", follow_redirects=False).status_code == 303


def test_day_week_month_charts_count_local_intervals(scenario: Scenario) -> None:
    with client(scenario) as http:
        sign_in(http, "alice")
        today = http.get("/households/h-alice").text  # NOW is on the DST day
        slots = [int(n) for n in re.findall(r'data-slots="(\d+)"', today)]
        assert slots and set(slots) == {92}
        normal = http.get("/households/h-alice/day/2024-03-30").text
        assert set(int(n) for n in re.findall(r'data-slots="(\d+)"', normal)) == {96}
        assert "No data from pv inverter meter SDM-PV" in today  # silent since 12:00
        assert "meter SDM-H1 on gateway gw-alice until" in today and "SDM-H2" in today  # exchange
        week = http.get("/households/h-alice/week/2024-03-27").text
        assert set(int(n) for n in re.findall(r'data-slots="(\d+)"', week)) == {7}
        month = http.get("/households/h-alice/month/2024-03").text
        assert set(int(n) for n in re.findall(r'data-slots="(\d+)"', month)) == {31}
        for bad in ("/households/h-alice/day/2024-13-01", "/households/h-alice/year/2024",
                    "/households/h-alice/day/99999-01-01"):
            assert http.get(bad).status_code == 404


def test_interval_csv_matches_register_differences(scenario: Scenario) -> None:
    with client(scenario) as http:
        sign_in(http, "alice")
        answer = http.get("/households/h-alice/intervals/day/2024-03-31.csv")
        assert answer.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        house = [r for r in rows if r["metering_point"] == "mp-alice-house"]
        # 52 quarter hours up to 14:00 local (02:00-03:00 does not exist), less two at the
        # exchange: a binding covers readings by their end in [from, to), so the old meter's
        # reading ending at 10:00 falls outside it and the new meter's first is its baseline
        assert len(house) == 52 - 2 and {r["device"] for r in rows} == {"gw-alice"}
        assert all(int(r["import_wh"]) >= 0 for r in rows)


def test_verification_panel_and_bundle(scenario: Scenario, tmp_path: Path) -> None:
    with client(scenario) as http:
        sign_in(http, "alice")
        day = http.get("/households/h-alice/points/mp-alice-house/day/2024-03-31").text
        link = re.search(r'href="(/households/h-alice/points/mp-alice-house/readings/gw-alice/\d+)"',
                         day).group(1)
        panel = http.get(link).text
        assert "Signed by gateway <strong>gw-alice</strong>" in panel
        assert "households.test/log" in panel and "logged at position" in panel
        bundle = http.get(link + "/bundle")
        assert "attachment" in bundle.headers["content-disposition"]
        verified = verify_bundle(bundle.text, scenario.log_key.verifier)  # type: ignore[attr-defined]
        assert verified.reading.reading.device == "gw-alice"


def test_pages_show_people_times_not_unix_seconds(scenario: Scenario) -> None:
    """Every household page a person reads: times local with zone, an interval with its two ends."""
    with client(scenario) as http:
        sign_in(http, "alice")
        day = http.get("/households/h-alice/points/mp-alice-house/day/2024-03-31").text
        link = re.search(r'href="(/households/h-alice/points/mp-alice-house/readings/gw-alice/\d+)"',
                         day).group(1)
        pages = ["/households/h-alice", "/households/h-alice/day/2024-03-30",
                 "/households/h-alice/week/2024-03-27", "/households/h-alice/month/2024-03",
                 "/households/h-alice/points/mp-alice-house/day/2024-03-31", link,
                 "/households/h-alice/bill/2024-03"]
        for path in pages:
            answer = http.get(path)
            assert answer.status_code == 200, path
            assert_no_unix_seconds(answer.text, path)
        panel = http.get(link).text
        interval = re.search(r"Interval ([^:]+ \d\d:\d\d(?::\d\d)?) – (\d\d:\d\d(?::\d\d)?) (CES?T):", panel)
        assert interval and interval.group(1)[-5:] != interval.group(2)[-5:], panel


def test_bill_lines_add_up_and_empty_state(scenario: Scenario) -> None:
    with client(scenario) as http:
        sign_in(http, "bob")
        page = http.get("/households/h-bob/bill/2024-03").text
        amounts = [int(a) for a in re.findall(r'data-amount="(-?\d+)"', page)]
        total = int(re.search(r'data-total="(-?\d+)"', page).group(1))
        assert len(amounts) == 10 and sum(amounts) == total
        assert "Community share" in page and 'id="savings"' in page
        lines = list(csv.DictReader(io.StringIO(http.get("/households/h-bob/bill/2024-03.csv").text)))
        assert sum(int(r["amount_micro_eur"]) for r in lines[:-1]) == int(lines[-1]["amount_micro_eur"])
        empty = http.get("/households/h-bob/bill/2024-02").text
        assert 'id="no-bill"' in empty


def test_live_telemetry_is_scoped_and_marked_unsigned(scenario: Scenario) -> None:
    with client(scenario) as http:
        live = http.app.state.web.live  # type: ignore[attr-defined]
        topic = "meterchain/v1/gw-alice/telemetry"
        assert live.accept(topic, Telemetry("gw-alice", "SDM-H2", NOW, 1234, (2301,)).to_cbor())
        assert live.accept(topic, Telemetry("gw-bob", "SDM-B", NOW, 9, ()).to_cbor()) is None
        assert live.accept(topic, b"\xff") is None and live.dropped == 2
        sign_in(http, "alice")
        data = http.get("/households/h-alice/live.json").json()
        by_meter = {m["meter"]: m for m in data["meters"]}
        assert by_meter["SDM-H2"]["power_w"] == 1234 and by_meter["SDM-H2"]["signed"] is False
        assert "SDM-H1" not in by_meter  # exchanged out before NOW
        assert "live · unsigned" in http.get("/households/h-alice").text


def test_export_holds_only_own_data(scenario: Scenario) -> None:
    with client(scenario) as http:
        sign_in(http, "alice")
        document = json.loads(http.get("/households/h-alice/export.json").text)
        assert {p["id"] for p in document["metering_points"]} == {"mp-alice-house", "mp-alice-pv"}
        assert document["logins"] == ["alice"]
        assert "password" not in json.dumps(document)
        count = sum(len(p["readings"]) for p in document["metering_points"])
        assert count == scenario.readings["gw-alice"] - 1  # less the one outside any binding


def test_admin_links_invite_and_reset(scenario: Scenario) -> None:
    with client(scenario) as http:
        assert http.post("/api/v1/households/h-bob/invitations").status_code == 401
        invite = http.post("/api/v1/households/h-bob/invitations", headers=ADMIN).json()
        path = invite["url"].split("testserver", 1)[1]
        short = http.post(path, data={"username": "bob2", "password": "short", "repeat": "short"})
        assert short.status_code == 400 and "10 to 256" in short.text
        ok = http.post(path, data={"username": "Bob2", "password": "a-long-password",
                                   "repeat": "a-long-password"}, follow_redirects=False)
        assert ok.status_code == 303 and ok.headers["location"] == "/households/h-bob"
        assert http.get(path).status_code == 410  # one time only
        logins = http.get("/api/v1/households/h-bob/logins", headers=ADMIN).json()
        assert {x["username"] for x in logins} == {"bob", "bob2"}
        reset = http.post("/api/v1/households/h-bob/logins/bob2/reset", headers=ADMIN).json()
        http.post(reset["url"].split("testserver", 1)[1],
                  data={"password": "another-password", "repeat": "another-password"})
        http.cookies.clear()
        assert http.post("/login", data={"username": "bob2", "password": "a-long-password"}
                         ).status_code == 401
        sign_in_ok = http.post("/login", data={"username": "bob2", "password": "another-password"},
                               follow_redirects=False)
        assert sign_in_ok.status_code == 303
        assert http.post("/api/v1/households/h-alice/logins/bob2/reset",
                         headers=ADMIN).status_code == 404
        assert http.put("/api/v1/households/h-bob/timezone", headers=ADMIN,
                        json={"timezone": "Mars/Olympus"}).status_code == 400


def test_cli_invitation_link_works_in_the_dashboard(scenario: Scenario) -> None:
    from meterchain.cli.main import app as cli
    from typer.testing import CliRunner

    runner = CliRunner()
    made = runner.invoke(cli, ["backend", "households", "invite", "h-alice", "--db",
                               str(scenario.db), "--base-url", "http://testserver"])
    assert made.exit_code == 0, made.output
    url = made.output.split()[0]
    assert runner.invoke(cli, ["backend", "households", "timezone", "h-nobody", "UTC", "--db",
                               str(scenario.db)]).exit_code == 1
    with client(scenario) as http:
        answer = http.post(url.removeprefix("http://testserver"), follow_redirects=False,
                           data={"username": "alice.two", "password": "yet-another-pw",
                                 "repeat": "yet-another-pw"})
        assert answer.headers["location"] == "/households/h-alice"
        assert http.get("/households/h-alice").status_code == 200
