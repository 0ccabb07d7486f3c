"""The operator console over HTTP (no browser): invitations with TOTP enrolment, sign-in with a
code that works once, fleet filters, household invitations, key rotation, dead-letter replay,
auditors reading only, a utility's operator seeing only its own, and no household or utility
credential opening any console page. Times on every page are for people (no Unix seconds)."""

from __future__ import annotations

import asyncio
import re
import time
import warnings
from pathlib import Path

import pytest
from meterchain.backend.api.app import create_app
from meterchain.backend.console.routes import COOKIE, csrf_token
from meterchain.backend.console.tables import ConsoleTables
from meterchain.cli.main import app as cli_app
from meterchain.contract.humantime import human_interval
from meterchain.contract.note import NoteVerifier
from typer.testing import CliRunner

from tests.support.access import all_routes
from tests.support.console import PASSWORD, ConsoleWorld, build_console, code, secret_of
from tests.support.humantime import assert_no_unix_seconds
from tests.support.settlement import COMMUNITY, T0, close_site, community, readings_at
from tests.support.utility import ADMIN

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PAGES = ["/console", "/console?state=silent", "/console?silent_after=abc&q=%3Cb%3E", "/console/households",
         "/console/keys",
         "/console/webhooks", "/console/log", "/console/tokens", "/console/settlement", "/console/points"]


@pytest.fixture(scope="module")
def cw(tmp_path_factory: pytest.TempPathFactory) -> ConsoleWorld:
    import asyncio

    return asyncio.run(build_console(tmp_path_factory.mktemp("console")))


def client(cw: ConsoleWorld) -> TestClient:
    return TestClient(create_app(str(cw.world.db), ADMIN, cw.world.log_key.verifier))


def enrol(http: TestClient, token: str, username: str) -> tuple[str, str]:
    """Accept an invitation through its page; the TOTP secret it showed and the code it spent."""
    page = http.get(f"/console/invite/{token}")
    assert page.status_code == 200, page.text
    secret = secret_of(page.text)
    form = {"secret": secret, "username": username, "password": PASSWORD, "repeat": PASSWORD}
    wrong = http.post(f"/console/invite/{token}", data=form | {"code": "000000"})
    assert wrong.status_code == 400 and "does not match" in wrong.text
    spent = code(secret)
    done = http.post(f"/console/invite/{token}", data=form | {"code": spent}, follow_redirects=False)
    assert done.status_code == 303, done.text
    assert http.get(f"/console/invite/{token}").status_code == 410  # once only
    return secret, spent


def sign_in(http: TestClient, username: str, secret: str) -> None:
    answer = http.post("/console/login", data={"username": username, "password": PASSWORD,
                                                "code": code(secret, 1)}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def csrf(http: TestClient, path: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{32})"', http.get(path).text).group(1)


def test_operator_signs_in_with_totp_and_acts(cw: ConsoleWorld) -> None:
    with client(cw) as http:
        secret, spent = enrol(http, cw.invitations["operator:all"], "olga")
        no_code = http.post("/console/login", data={"username": "olga", "password": PASSWORD, "code": ""})
        assert no_code.status_code == 401
        # the very code that enrolled (not "the code now": a 30 s step may have begun since)
        used = http.post("/console/login", data={"username": "olga", "password": PASSWORD,
                                                  "code": spent})
        assert used.status_code == 401  # the code that enrolled is spent
        sign_in(http, "olga", secret)
        replayed = http.post("/console/login", data={"username": "olga", "password": PASSWORD,
                                                      "code": code(secret, 1)}, follow_redirects=False)
        assert replayed.status_code == 401  # a code works once
        for path in PAGES:
            page = http.get(path)
            assert page.status_code == 200, path
            assert_no_unix_seconds(page.text, path)
        log = http.get("/console/log").text
        assert 'id="log-size"' in log and "utility.test/log" in log and "Witness cosignatures: none" in log
        searched = http.get("/console?silent_after=abc&q=%3Cb%3E").text
        assert 'value="&lt;b&gt;"' in searched and "<b>" not in searched and 'value="600"' in searched
        fleet = http.get("/console?state=silent").text
        assert 'data-device="gw-b"' in fleet and 'data-device="gw-a"' not in fleet
        assert "meter clock 4 s behind" in fleet and "1 h ago" in fleet
        # invite a household: a link shown once, and it opens the household's sign-up page
        token = csrf(http, "/console/households")
        invited = http.post("/console/households/h1/invite", data={"csrf": token})
        link = re.search(r'id="shown-once">https?://[^/]+(/invite/[^<]+)<', invited.text).group(1)
        assert http.get(link).status_code == 200
        with client(cw) as household:  # the household accepts it: its session opens no console page
            joined = household.post(link, data={"username": "hanna", "password": PASSWORD, "repeat": PASSWORD},
                                    follow_redirects=False)
            assert joined.status_code == 303 and household.cookies.get("mc_session")
            assert household.get("/households/h1").status_code == 200
            for path in PAGES:
                answer = household.get(path, follow_redirects=False)
                assert answer.status_code == 303 and answer.headers["location"] == "/console/login", path
        assert http.post("/console/households/h1/invite", data={"csrf": "0" * 32}).status_code == 403
        # rotate u1's key: the new token works on the API
        keys = http.get("/console/keys").text
        u1_key = re.search(r'data-key="([^"]+)"><td[^>]*>[^<]+<br><small>u1<', keys).group(1)
        rotated = http.post(f"/console/keys/{u1_key}/rotate", data={"csrf": token, "grace": "0"})
        new_token = re.search(r'id="shown-once">([^<]+)<', rotated.text).group(1)
        whoami = http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {new_token}"})
        assert whoami.status_code == 200 and whoami.json()["id"] == "u1"
        # create a household key; an unknown subject is refused with the reason
        made = http.post("/console/keys", data={"csrf": token, "kind": "household", "subject": "h1",
                                                "label": "h1 app"})
        household_token = re.search(r'id="shown-once">([^<]+)<', made.text).group(1)
        assert http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {household_token}"}).json()["id"] == "h1"
        unknown = http.post("/console/keys", data={"csrf": token, "kind": "household", "subject": "h-nope"})
        assert unknown.status_code == 404 and "h-nope" in unknown.text
        # replay the dead letter: it leaves the dead-letter list and is pending again
        hooks = http.get("/console/webhooks").text
        assert f'data-delivery="{cw.dead_delivery}"' in hooks and "HTTP 503" in hooks
        http.post(f"/console/webhooks/wh-0123456789ab/deliveries/{cw.dead_delivery}/replay",
                  data={"csrf": token})
        after = http.get("/console/webhooks").text
        assert f'data-delivery="{cw.dead_delivery}"' not in after and ">pending<" in after
        api = http.get("/api/v1/webhooks/wh-0123456789ab/deliveries", headers={"Authorization": f"Bearer {ADMIN}"})
        assert api.json()[0]["state"] == "pending"
        # an installer token with its command and QR code, then listed as usable
        issued = http.post("/console/tokens", data={"csrf": token, "scope": "utility:u1", "note": "job 7",
                                                     "hours": "24"})
        assert "meterchain agent provision --backend" in issued.text and "<svg" in issued.text
        listed = http.get("/console/tokens").text
        assert "job 7" in listed and "usable until" in listed
        assert_no_unix_seconds(listed, "/console/tokens")
        bad = http.post("/console/tokens", data={"csrf": token, "scope": "utility:nope", "hours": "24"})
        assert bad.status_code == 404 and "register it first" in bad.text
        http.post("/console/logout")
        assert http.get("/console", follow_redirects=False).headers["location"] == "/console/login"


def test_auditor_reads_and_changes_nothing(cw: ConsoleWorld) -> None:
    with client(cw) as http:
        secret, _ = enrol(http, cw.invitations["auditor:all"], "audrey")
        sign_in(http, "audrey", secret)
        assert "Rotate" not in http.get("/console/keys").text
        token = csrf_token(http.cookies[COOKIE])  # the auditor's pages carry no forms
        answer = http.post("/console/households/h1/invite", data={"csrf": token})
        assert answer.status_code == 403 and "Auditors" in answer.text
        # sessions expire: after 30 minutes unused, and 12 hours after sign-in even if used
        console = http.app.state.console  # type: ignore[attr-defined]
        start = int(time.time())
        for minutes in (29, 58, 87):  # used every 29 minutes: still signed in
            console.clock = lambda m=minutes: start + 60 * m
            assert http.get("/console/log", follow_redirects=False).status_code == 200, minutes
        console.clock = lambda: start + 87 * 60 + 31 * 60
        assert http.get("/console/log", follow_redirects=False).headers["location"] == "/console/login"


def test_a_session_ends_12_hours_after_sign_in(cw: ConsoleWorld) -> None:
    with client(cw) as http:
        token, _ = asyncio.run(_invite(cw))
        secret, _ = enrol(http, token, "tess")
        sign_in(http, "tess", secret)
        console = http.app.state.console  # type: ignore[attr-defined]
        start = int(time.time())
        for minutes in range(25, 12 * 60, 25):  # never idle for long
            console.clock = lambda m=minutes: start + 60 * m
            assert http.get("/console/log", follow_redirects=False).status_code == 200, minutes
        console.clock = lambda: start + 12 * 3600 + 1
        assert http.get("/console/log", follow_redirects=False).status_code == 303


async def _invite(cw: ConsoleWorld) -> tuple[str, object]:
    from meterchain.backend.store import open_store

    store = await open_store(str(cw.world.db))
    try:
        return await ConsoleTables(store).invite("auditor", "all", int(time.time()))  # type: ignore[arg-type]
    finally:
        await store.close()


def test_a_utility_operator_sees_its_own(cw: ConsoleWorld) -> None:
    with client(cw) as http:
        secret, _ = enrol(http, cw.invitations["operator:utility:u2"], "uwe")
        sign_in(http, "uwe", secret)
        keys = http.get("/console/keys").text
        assert ">u2<" in keys and ">u1<" not in keys and ">h1<" not in keys
        assert http.get("/console/households").status_code == 403
        points = http.get("/console/points").text
        assert 'data-point="mp-2"' in points and 'data-point="mp-3"' in points and 'data-point="mp-1"' not in points
        own = http.post("/console/keys", data={"csrf": csrf_token(http.cookies[COOKIE]), "kind": "household",
                                               "subject": "h1", "label": "u2 tool"})  # kind and subject ignored
        assert own.status_code == 200 and "API token of utility u2" in own.text
        other = http.post("/console/tokens", data={"csrf": csrf_token(http.cookies[COOKIE]),
                                                    "scope": "utility:u1", "hours": "1"})
        assert other.status_code == 403
        assert "wh-0123456789ab" in http.get("/console/webhooks").text


def test_household_and_utility_credentials_open_no_console_page(cw: ConsoleWorld, tmp_path: Path) -> None:
    app = create_app(str(cw.world.db), ADMIN, cw.world.log_key.verifier)
    console_paths = [r.path for r in all_routes(app.router.routes)  # type: ignore[arg-type]
                     if r.path.startswith("/console") and "{" not in r.path and "GET" in r.methods
                     and r.path != "/console/login"]
    assert len(console_paths) >= 5
    with client(cw) as http:
        for who in ("u1", "h1", "root"):
            for path in console_paths:
                answer = http.get(path, headers=cw.world.auth(who), follow_redirects=False)
                assert answer.status_code == 303 and answer.headers["location"] == "/console/login", (who, path)
        http.cookies.set(COOKIE, "not-a-session")
        assert http.get("/console", follow_redirects=False).status_code == 303


def test_console_invitations_through_the_api(cw: ConsoleWorld) -> None:
    with client(cw) as http:
        body = {"role": "auditor", "scope": "utility:u1"}
        assert http.post("/api/v1/console/invitations", json=body, headers=cw.world.auth("h1")).status_code == 403
        made = http.post("/api/v1/console/invitations", json=body, headers=cw.world.auth("root"))
        assert made.status_code == 201, made.text
        answer = made.json()
        assert answer["expires_at"].endswith("+00:00") and "/console/invite/" in answer["url"]
        bad = http.post("/api/v1/console/invitations", json={"role": "king"}, headers=cw.world.auth("root"))
        assert bad.status_code == 422
        path = answer["url"].split("://", 1)[1].split("/", 1)[1]
        page = http.get(f"/{path}")
        assert page.status_code == 200 and "auditor" in page.text and "utility:u1" in page.text
        listed = http.get("/api/v1/console/accounts", headers=cw.world.auth("root")).json()
        assert all(set(a) == {"username", "role", "scope"} for a in listed)


def test_cli_invites_lists_and_replays(tmp_path: Path) -> None:
    import asyncio

    cw = asyncio.run(build_console(tmp_path))
    runner = CliRunner()
    db = ["--db", str(cw.world.db)]
    invited = runner.invoke(cli_app, ["backend", "console", "invite", "--role", "auditor", *db])
    assert invited.exit_code == 0, invited.output
    assert "/console/invite/" in invited.output and "valid until" in invited.output
    assert_no_unix_seconds(invited.output, "meterchain backend console invite")
    refused = runner.invoke(cli_app, ["backend", "console", "invite", "--scope", "town:x", *db])
    assert refused.exit_code == 1 and "'all' or 'utility:<id>'" in refused.output
    dead = runner.invoke(cli_app, ["backend", "console", "dead-letters", *db])
    assert f"wh-0123456789ab {cw.dead_delivery}" in dead.output and "HTTP 503" in dead.output
    assert_no_unix_seconds(dead.output, "meterchain backend console dead-letters")
    again = runner.invoke(cli_app, ["backend", "console", "replay", "wh-0123456789ab", str(cw.dead_delivery), *db])
    assert again.exit_code == 0 and "pending again" in again.output
    twice = runner.invoke(cli_app, ["backend", "console", "replay", "wh-0123456789ab", str(cw.dead_delivery), *db])
    assert twice.exit_code == 1 and "not in the dead-letter list" in twice.output


def test_settlement_runs_and_exclusions(tmp_path: Path) -> None:
    import asyncio

    async def site_with_runs() -> tuple[Path, str, str]:
        site = await community(tmp_path)
        for k in range(4):
            await readings_at(site, T0 + 900 * k)
        await site.send(site.message("gw-b", "M3", T0 + 900 * 4 + 7, 9_999_999, 50_000))  # off the grid
        await site.runner.settle_community(COMMUNITY, T0 + 900 * 8)
        await site.sealer.seal_all()
        token, _ = await ConsoleTables(site.admin).invite("auditor", "all", int(time.time()))
        verifier = str(site.log_key.verifier)
        await close_site(site)
        return site.path, token, verifier

    db, invitation, verifier = asyncio.run(site_with_runs())
    with TestClient(create_app(str(db), ADMIN, NoteVerifier.parse(verifier))) as http:
        secret, _ = enrol(http, invitation, "sally")
        sign_in(http, "sally", secret)
        page = http.get("/console/settlement")
        assert page.status_code == 200 and f'data-community="{COMMUNITY}"' in page.text
        assert "off-grid" in page.text and "gw-b#" in page.text
        assert human_interval(T0, T0 + 900) in page.text
        assert_no_unix_seconds(page.text, "/console/settlement")
