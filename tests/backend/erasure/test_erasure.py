"""Erasure of a household's data (issue 7): the data goes, the log stays and still verifies.

On the access scenario (access_helpers.py): h-a holds mp-a (a meter exchange mid-day), h-old held
mp-n until MOVE and h-new from then, h-b holds mp-b of another utility. After erasing a household,
an independent tile client rebuilds the same signed root from the same leaf hashes, the audit (full
and --rebuild) passes and counts the erased leaves, bundles answer 410 "erased on …", and every
other household's readings and bundles are as before.
"""

from __future__ import annotations

import asyncio
import sqlite3
import warnings
from pathlib import Path

from meterchain.backend.api.app import create_app
from meterchain.backend.erasure.tables import leaf_ranges
from meterchain.backend.log.audit import audit
from meterchain.backend.store import open_store
from meterchain.backend.web import accounts
from meterchain.backend.web.tables import WebTables
from meterchain.contract.batch import SignedBatchHeader, verify_chain
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.telemetry import Telemetry
from typer.testing import CliRunner

from tests.support.access import ADMIN_TOKEN, Scenario, build
from tests.support.log import fetch_level as _fetch_level
from tests.support.log import open_checkpoint as _open_checkpoint
from tests.support.log import root as _root

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _client(scenario: Scenario) -> TestClient:
    return TestClient(create_app(str(scenario.db), ADMIN_TOKEN, scenario.log_key.verifier))  # type: ignore[attr-defined]


def _public_log(http: TestClient, verifier: object) -> tuple[int, bytes, list[bytes]]:
    """What anyone can copy: the signed checkpoint, every leaf hash and the batch chain; the
    root is rebuilt from the leaf hashes and the chain must end at it."""
    _, size, root = _open_checkpoint(http.get("/checkpoint").text, str(verifier))
    leaves = _fetch_level(http, 0, size)
    assert _root(leaves) == root
    headers, index = [], 0
    while (answer := http.get(f"/batch/{index}")).status_code == 200:
        headers.append(SignedBatchHeader.from_cbor(answer.content))
        index += 1
    newest = verify_chain(headers, verifier)  # type: ignore[arg-type]
    assert (newest.size, newest.root) == (size, root)  # type: ignore[union-attr]
    return size, root, leaves


def _audit(db: Path, verifier: object, log_only: bool = False):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        store = await open_store(db)
        try:
            return await audit(store, verifier, log_only=log_only)  # type: ignore[arg-type]
        finally:
            await store.close()

    return asyncio.run(go())


def _erase(http: TestClient, household: str) -> dict:  # type: ignore[type-arg]
    answer = http.post(f"/api/v1/households/{household}/erasure", json={"confirm": household},
                       headers=ROOT)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _bundle(http: TestClient, scenario: Scenario, who: str, point: str, device: str, seq: int
            ) -> object:
    return http.get(f"/api/v1/metering-points/{point}/readings/{device}/{seq}/bundle",
                    headers=ROOT if who == "root" else scenario.auth(who))


def test_leaf_ranges_are_maximal_runs() -> None:
    assert leaf_ranges([]) == ()
    assert leaf_ranges([7, 3, 4, 5, 9, 10, 4]) == ((3, 5), (7, 7), (9, 10))


def test_erasure_keeps_the_log_verifiable_and_answers_410(tmp_path: Path) -> None:
    scenario = asyncio.run(build(tmp_path))
    verifier = scenario.log_key.verifier  # type: ignore[attr-defined]
    seqs_a = scenario.seqs["mp-a"]
    with _client(scenario) as http:
        size, root, leaves = _public_log(http, verifier)
        before_b = http.get("/api/v1/metering-points/mp-b/readings", headers=scenario.auth("h-b")).json()
        before_n = http.get("/api/v1/metering-points/mp-n/readings", headers=ROOT).json()
        indices_a = sorted(r["leaf_index"] for r in http.get(
            "/api/v1/metering-points/mp-a/readings", headers=ROOT).json())
        assert len(indices_a) == len(seqs_a)
        live = http.app.state.web.live  # type: ignore[attr-defined]
        sample = Telemetry("gw-a", "M-A2", 1_700_000_000, 1234, (2301, 2302, 2303))
        live.accept("meterchain/v1/gw-a/telemetry", sample.to_cbor())
        assert live.latest([("gw-a", "M-A2")], 1_700_000_000)

        refused = http.post("/api/v1/households/h-a/erasure", json={"confirm": "h-b"}, headers=ROOT)
        assert refused.status_code == 400 and refused.json()["error"] == "not-confirmed"
        assert http.post("/api/v1/households/h-a/erasure", json={"confirm": "h-a"},
                         headers=scenario.auth("h-a")).status_code == 403
        result = _erase(http, "h-a")
        assert result["erased_now"] is True
        record = result["erasure"]
        assert record["household"] == "h-a" and record["requested_by"] == "admin:root"
        assert record["leaves"] == len(seqs_a) and record["unsealed"] == 0
        assert [i for a, b in record["ranges"] for i in range(a, b + 1)] == indices_a
        assert set(record) == {"id", "household", "requested_by", "time", "leaves", "ranges",
                               "unsealed", "logins"}  # no values
        assert not live.latest([("gw-a", "M-A2")], 1_700_000_000)  # telemetry gone too

        # The public log is unchanged: same size, root and every leaf hash.
        assert _public_log(http, verifier) == (size, root, leaves)

        # Bundles: 410 with a clear body for anyone who could see the reading; 404 for others.
        for who in ("root", "u1", "aud-c1"):
            gone = _bundle(http, scenario, who, "mp-a", "gw-a", seqs_a[0])
            assert gone.status_code == 410, (who, gone.text)  # type: ignore[attr-defined]
            body = gone.json()  # type: ignore[attr-defined]
            assert body["error"] == "erased" and "was erased on " in body["detail"]
            assert f"leaf index {indices_a[0]}" in body["detail"]
        device = http.get(f"/api/v1/devices/gw-a/readings/{seqs_a[-1]}/bundle", headers=ROOT)
        assert device.status_code == 410 and device.json()["error"] == "erased"
        assert _bundle(http, scenario, "u2", "mp-a", "gw-a", seqs_a[0]).status_code == 404  # type: ignore[attr-defined]
        assert _bundle(http, scenario, "root", "mp-n", "gw-a", seqs_a[0]).status_code == 404  # type: ignore[attr-defined]
        # The household's own keys are revoked with its logins.
        assert http.get("/api/v1/whoami", headers=scenario.auth("h-a")).status_code == 401
        # Reading lists no longer hold the erased readings; the stray (unbound) one stays.
        assert http.get("/api/v1/metering-points/mp-a/readings", headers=ROOT).json() == []
        stray = http.get("/api/v1/devices/gw-a/readings", headers=ROOT).json()
        assert {r["seq"] for r in stray} == set(scenario.seqs["mp-n"]) | set(scenario.seqs["stray"])

        # Other households: untouched, and their bundles still verify.
        assert http.get("/api/v1/metering-points/mp-b/readings",
                        headers=scenario.auth("h-b")).json() == before_b
        assert http.get("/api/v1/metering-points/mp-n/readings", headers=ROOT).json() == before_n
        text = _bundle(http, scenario, "h-b", "mp-b", "gw-b", 1).text  # type: ignore[attr-defined]
        assert verify_bundle(text, verifier).reading.reading.seq == 1

        # Idempotent: nothing left, nothing recorded again, the same record answered.
        again = _erase(http, "h-a")
        assert again == {"erased_now": False, "erasure": record}
        assert http.get("/api/v1/households/h-a/erasures", headers=ROOT).json() == [record]

    with sqlite3.connect(scenario.db) as db:
        assert db.execute("SELECT count(*) FROM leaves WHERE data = X''").fetchone()[0] == len(seqs_a)
        seqs = ",".join(map(str, seqs_a))
        assert db.execute(f"SELECT count(*) FROM readings WHERE device = 'gw-a' AND seq IN ({seqs})").fetchone()[0] == 0
    for log_only in (False, True):
        report = _audit(scenario.db, verifier, log_only)
        assert report.ok, report.findings
        assert report.erased == len(seqs_a) and report.leaves == size


def test_erasing_the_household_that_moved_in_keeps_the_previous_ones_readings(tmp_path: Path
                                                                              ) -> None:
    from tests.support.access import MOVE, T0

    scenario = asyncio.run(build(tmp_path))
    seqs_n = scenario.seqs["mp-n"]
    new_seqs = [s for k, s in enumerate(seqs_n, start=1) if T0 + 900 * k >= MOVE]
    old_seqs = [s for s in seqs_n if s not in new_seqs]
    assert new_seqs and old_seqs
    with _client(scenario) as http:
        old_before = http.get("/api/v1/metering-points/mp-n/readings", headers=scenario.auth("h-old")).json()
        assert _erase(http, "h-new")["erasure"]["leaves"] == len(new_seqs)
        assert http.get("/api/v1/metering-points/mp-n/readings",
                        headers=scenario.auth("h-old")).json() == old_before
        assert [r["seq"] for r in http.get("/api/v1/metering-points/mp-n/readings",
                                           headers=ROOT).json()] == old_seqs
        assert _bundle(http, scenario, "h-old", "mp-n", "gw-a", old_seqs[-1]).status_code == 200  # type: ignore[attr-defined]
        assert _bundle(http, scenario, "u1", "mp-n", "gw-a", new_seqs[0]).status_code == 410  # type: ignore[attr-defined]
        # The previous household never saw the successor's readings: still 404, not 410.
        assert _bundle(http, scenario, "h-old", "mp-n", "gw-a", new_seqs[0]).status_code == 404  # type: ignore[attr-defined]
    assert _audit(scenario.db, scenario.log_key.verifier).ok  # type: ignore[attr-defined]


async def test_a_resent_erased_reading_is_never_stored_again(tmp_path: Path) -> None:
    from meterchain.backend.access.model import PointKind
    from meterchain.backend.access.tables import PartyTables
    from meterchain.backend.erasure.rules import erase_household

    from tests.support.backend import Gateway, backend, close

    gw = Gateway("gw-1", meter="M-1")
    admin, ingest, sealer, store = await backend(tmp_path, gw)
    parties = PartyTables(admin)
    await parties.add_utility("u", "U", 1)
    await parties.add_community("c", "u", "C", 1)
    await parties.add_household("h", "c", "H", 1)
    await parties.add_metering_point("mp", "u", "c", PointKind.CONSUMPTION, 1)
    await parties.bind_meter("mp", "gw-1", "M-1", 0, None, 1)
    await parties.add_occupancy("mp", "h", 0, None, 1)
    messages = [gw.message(s) for s in range(1, 6)]
    await ingest.process(messages[:3])  # 3 sealed, then 2 pending at the time of the erasure
    await sealer.seal_all()
    await ingest.process(messages[3:])
    record = await erase_household(admin, "h", "test", 2_000_000_000)
    assert record is not None and (record.leaves, record.unsealed) == (5, 2)
    assert await store.pending_count() == 2
    await sealer.seal_all()  # the erased pending leaves are sealed by their hashes as usual
    await ingest.process(messages + [gw.message(s) for s in (6, 7)])
    assert await store.reading_count("gw-1") == 2  # only 6 and 7: the erased ones stay erased
    assert (await store.ack_state("gw-1")).upto == 7
    await sealer.seal_all()
    report = await audit(store, sealer.signer.verifier)
    assert report.ok, report.findings
    assert report.erased == 5 and report.readings == 2
    await close(admin, ingest, sealer, store)


def test_the_household_erases_its_own_data_from_my_data(tmp_path: Path) -> None:
    scenario = asyncio.run(build(tmp_path))
    password = "alice-password-1"

    async def login() -> None:
        store = await open_store(scenario.db)
        web = WebTables(store)
        await web.set_timezone("h-a", "UTC")
        token, _ = await web.create_link("invite", "h-a", None, 1)
        await web.accept_invite(token, "alice", accounts.hash_password(password), 2)
        await store.close()

    asyncio.run(login())
    from tests.support.access import T0

    with _client(scenario) as http:
        assert http.post("/login", data={"username": "alice", "password": password},
                         follow_redirects=False).status_code == 303
        page = http.get("/households/h-a/data")
        assert page.status_code == 200 and "export.json" in page.text
        assert f"your {len(scenario.seqs['mp-a'])} stored readings" in page.text
        confirm = http.post("/households/h-a/data/erase", data={})
        assert confirm.status_code == 200 and 'name="step" value="confirm"' in confirm.text
        wrong = http.post("/households/h-a/data/erase",
                          data={"step": "confirm", "word": "erase", "password": "not-my-password"})
        assert wrong.status_code == 400
        no_word = http.post("/households/h-a/data/erase",
                            data={"step": "confirm", "word": "", "password": password})
        assert no_word.status_code == 400
        assert http.get("/api/v1/households/h-a/erasures", headers=ROOT).json() == []
        done = http.post("/households/h-a/data/erase",
                         data={"step": "confirm", "word": "Erase", "password": password})
        assert done.status_code == 200 and "Your data is erased" in done.text
        assert http.get("/households/h-a", follow_redirects=False).headers["location"] == "/login"
        assert http.post("/login", data={"username": "alice", "password": password}).status_code == 401
        records = http.get("/api/v1/households/h-a/erasures", headers=ROOT).json()
        assert [(r["requested_by"], r["leaves"], r["logins"]) for r in records] == [
            ("household:alice", len(scenario.seqs["mp-a"]), 1)]

    # Invited again, the household sees the day as erased and a reading's page as gone.
    asyncio.run(login())
    day = __import__("datetime").datetime.fromtimestamp(T0 + 900, __import__("datetime").timezone.utc)
    with _client(scenario) as http:
        http.post("/login", data={"username": "alice", "password": password})
        page = http.get(f"/households/h-a/day/{day:%Y-%m-%d}")
        assert page.status_code == 200 and "data-erased" in page.text and "readings erased on" in page.text
        point = http.get(f"/households/h-a/points/mp-a/day/{day:%Y-%m-%d}")
        assert point.status_code == 200 and "readings erased on" in point.text
        seq = scenario.seqs["mp-a"][0]
        for suffix in ("", "/bundle"):
            gone = http.get(f"/households/h-a/points/mp-a/readings/gw-a/{seq}{suffix}")
            assert gone.status_code == 410 and "erased on" in gone.text


def test_cli_erase_needs_confirm_and_audit_reports_erased_leaves(tmp_path: Path) -> None:
    from meterchain.cli.main import app

    scenario = asyncio.run(build(tmp_path))
    runner = CliRunner()
    db = str(scenario.db)
    dry = runner.invoke(app, ["backend", "households", "erase", "h-b", "--db", db])
    assert dry.exit_code == 2 and "nothing was erased" in dry.output
    done = runner.invoke(app, ["backend", "households", "erase", "h-b", "--db", db, "--confirm"])
    assert done.exit_code == 0, done.output
    assert f"{len(scenario.seqs['mp-b'])} reading leaves erased" in done.output
    again = runner.invoke(app, ["backend", "households", "erase", "h-b", "--db", db, "--confirm"])
    assert again.exit_code == 0 and "nothing left to erase" in again.output
    unknown = runner.invoke(app, ["backend", "households", "erase", "nobody", "--db", db, "--confirm"])
    assert unknown.exit_code == 1
    for extra in ([], ["--rebuild"]):
        result = runner.invoke(app, ["audit", "--db", db, *extra])
        assert result.exit_code == 0, result.output
        assert f"{len(scenario.seqs['mp-b'])} erased leaves" in " ".join(result.output.split())
