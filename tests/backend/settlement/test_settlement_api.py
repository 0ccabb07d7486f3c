"""Settlement over HTTP and the CLI: scoped reads (admin, utility, auditor, household), admin-only
terms and prices, a household's own listing, and `meterchain settle --verify` passing on the
stored readings and failing on a tampered one."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from meterchain.backend.access.model import KeyKind
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.app import create_app
from meterchain.backend.store import open_store
from meterchain.cli.main import app as cli_app
from meterchain.contract.leaves import SettlementLeaf, parse_leaf
from typer.testing import CliRunner

from tests.support.humantime import assert_no_unix_seconds
from tests.support.settlement import COMMUNITY, T0, close_site, open_site

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ADMIN = "admin-token-settlement"
FLOW = {"mp-1": (400, 0), "mp-2": (30, 600), "mp-3": (250, 0)}
MEMBERS = (("mp-1", "gw-a", "M1"), ("mp-2", "gw-a", "M2"), ("mp-3", "gw-b", "M3"))


@dataclass
class World:
    db: Path
    log_key: str
    tokens: dict[str, str]


async def build(tmp_path: Path) -> World:
    site = await open_site(tmp_path)
    try:
        for point, device, meter in MEMBERS:
            await site.member(point, device, meter)
        for k in range(4):
            messages = []
            for point, device, meter in MEMBERS:
                if k >= 2 and point == "mp-3":
                    continue  # mp-3 silent: its interval from T0 + 900 settles at the deadline
                imp, exp = FLOW[point]
                messages.append(await site.step(device, meter, T0 + 900 * k, imp * bool(k),
                                                exp * bool(k)))
            await site.send(*messages)
        await site.runner.settle_community(COMMUNITY, T0 + 1800 + 1800)  # deadline of interval 2
        await site.sealer.seal_all()
        parties = PartyTables(site.admin)
        now = int(time.time())
        await parties.add_utility("u-2", "Other", now)
        await parties.add_community("c-other", "u-2", "Elsewhere", now)
        await parties.add_household("h-1", COMMUNITY, "Ada", now)
        await parties.add_occupancy("mp-1", "h-1", T0, None, now)
        await parties.add_grant("g-1", "auditor", now + 86_400, [], [COMMUNITY], now)
        tokens = {}
        for name, kind, subject in (("u-1", KeyKind.UTILITY, "u-1"), ("u-2", KeyKind.UTILITY, "u-2"),
                                    ("h-1", KeyKind.HOUSEHOLD, "h-1"),
                                    ("aud", KeyKind.AUDITOR, "g-1")):
            _, tokens[name] = await parties.create_key(kind, subject, name, None, now)
        tokens["admin"] = ADMIN
        return World(site.path, str(site.log_key.verifier), tokens)
    finally:
        await close_site(site)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return asyncio.run(build(tmp_path_factory.mktemp("settlement-api")))


@pytest.fixture(scope="module")
def http(world: World) -> Iterator[TestClient]:
    from meterchain.contract.note import NoteVerifier

    with TestClient(create_app(str(world.db), ADMIN, NoteVerifier.parse(world.log_key))) as client:
        yield client


def get(http: TestClient, world: World, who: str, path: str):  # type: ignore[no-untyped-def]
    return http.get(f"/api/v1/communities/{path}",
                    headers={"Authorization": f"Bearer {world.tokens[who]}"})


@pytest.mark.parametrize("who, status", [("admin", 200), ("u-1", 200), ("aud", 200),
                                         ("u-2", 404), ("h-1", 404)])
def test_community_intervals_are_scoped(http: TestClient, world: World, who: str, status: int) -> None:
    answer = get(http, world, who, f"{COMMUNITY}/intervals")
    assert answer.status_code == status, answer.text
    if status == 200:
        rows = answer.json()
        assert [r["interval_start"] for r in rows] == [T0, T0 + 900]
        assert rows[1]["revision"] == 0 and rows[1]["missing"] == 1
        assert rows[0]["leaf_index"] is not None


def test_a_household_sees_its_own_member_lines_only(http: TestClient, world: World) -> None:
    own = get(http, world, "h-1", f"{COMMUNITY}/members/mp-1/lines")
    assert own.status_code == 200 and {line["member"] for line in own.json()} == {"mp-1"}
    assert sum(line["bought_local_wh"] + line["bought_grid_wh"] for line in own.json()) == 800
    assert get(http, world, "h-1", f"{COMMUNITY}/members/mp-2/lines").status_code == 404
    assert get(http, world, "u-2", f"{COMMUNITY}/members/mp-1/lines").status_code == 404
    assert get(http, world, "u-1", f"{COMMUNITY}/members/mp-2/lines").status_code == 200


def test_interval_detail_carries_the_settlement_leaf(http: TestClient, world: World) -> None:
    import base64

    answer = get(http, world, "aud", f"{COMMUNITY}/intervals/{T0}")
    assert answer.status_code == 200
    [revision] = answer.json()
    leaf = parse_leaf(base64.b64decode(revision["leaf"]))
    assert isinstance(leaf, SettlementLeaf) and leaf.fields["digest"].hex() == revision["digest"]
    assert revision["origin"] == [["mp-2", 600]]
    assert get(http, world, "aud", f"{COMMUNITY}/intervals/{T0 + 7}").status_code == 404


def test_terms_and_prices_are_admin_only_and_validated(http: TestClient, world: World) -> None:
    body = {"valid_from": T0 + 86_400, "retail_price": 310_000, "feed_in_price": 70_000,
            "timezone": "UTC", "deadline_seconds": 1800}
    path = f"/api/v1/communities/{COMMUNITY}/terms"
    denied = http.put(path, json=body, headers={"Authorization": f"Bearer {world.tokens['u-1']}"})
    assert denied.status_code == 403
    bad = http.put(path, json={**body, "feed_in_price": 400_000},
                   headers={"Authorization": f"Bearer {ADMIN}"})
    assert bad.status_code == 400 and "feed-in" in bad.json()["detail"]
    past = http.put(path, json={**body, "valid_from": T0},
                    headers={"Authorization": f"Bearer {ADMIN}"})
    assert past.status_code == 400  # intervals from T0 on are settled already
    ok = http.put(path, json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200, ok.text
    versions = get(http, world, "u-1", f"{COMMUNITY}/terms").json()
    assert [v["valid_from"] for v in versions] == [T0, T0 + 86_400]
    csv = "start,price\n" + "\n".join(f"{T0 + 2 * 86_400 + 3600 * h},{80 + h}" for h in range(24))
    prices = http.post(f"/api/v1/communities/{COMMUNITY}/prices", json={"kind": "retail", "csv": csv},
                       headers={"Authorization": f"Bearer {ADMIN}"})
    assert prices.status_code == 201 and prices.json() == {"rows": 24}
    again = http.post(f"/api/v1/communities/{COMMUNITY}/prices", json={"kind": "retail", "csv": csv},
                      headers={"Authorization": f"Bearer {ADMIN}"})
    assert again.status_code == 409


def test_an_unreadable_price_csv_is_a_400_naming_the_problem(http: TestClient) -> None:
    answer = http.post(f"/api/v1/communities/{COMMUNITY}/prices",
                       json={"kind": "feed_in", "csv": "a\rb"},
                       headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 400, answer.text
    assert "unreadable CSV" in answer.json()["detail"]


def test_a_household_posts_the_listing_of_its_own_member(http: TestClient, world: World) -> None:
    path = f"/api/v1/communities/{COMMUNITY}/listings"
    auth = {"Authorization": f"Bearer {world.tokens['h-1']}"}
    mine = http.post(path, json={"member": "mp-1", "valid_from": T0 + 3600, "buy_limit": 250_000,
                                 "green_only": True}, headers=auth)
    assert mine.status_code == 201, mine.text
    assert http.post(path, json={"member": "mp-2", "valid_from": T0 + 3600, "sell_ask": 1},
                     headers=auth).status_code == 404
    listed = get(http, world, "u-1", f"{COMMUNITY}/listings?at={T0 + 3600}").json()
    assert [(x["member"], x["buy_limit"], x["green_only"]) for x in listed] == [("mp-1", 250_000, True)]


def test_settle_verify_passes_on_stored_readings_and_fails_on_a_tampered_one(
    world: World, tmp_path: Path
) -> None:
    import shutil

    runner = CliRunner()
    key = tmp_path / "log.pub"
    key.write_text(world.log_key + "\n")
    args = ["settle", "--verify", "--db", str(world.db), "--community", COMMUNITY,
            "--interval", str(T0 + 900), "--log-key", str(key)]
    ok = runner.invoke(cli_app, args)
    assert ok.exit_code == 0, ok.output
    assert "equals the logged digest" in ok.output and "reading-bundles" in ok.output
    assert_no_unix_seconds(ok.output, "meterchain settle --verify")
    tampered = tmp_path / "tampered.db"
    shutil.copy(world.db, tampered)

    async def tamper() -> None:
        store = await open_store(tampered)
        try:  # a reading the settlement used now claims more energy than was signed
            await store.execute("UPDATE readings SET import_wh = import_wh + 100 "
                                "WHERE meter = 'M1' AND \"end\" = ?", (T0 + 1800,))
        finally:
            await store.close()

    asyncio.run(tamper())
    args[3] = str(tampered)
    rows_only = runner.invoke(cli_app, args)
    assert rows_only.exit_code == 0, rows_only.output  # the signed message counts, not the row

    async def swap_meters(path: Path) -> None:
        store = await open_store(path)
        try:  # the table alone says mp-1 and mp-2 swapped meters; the logged bindings do not
            await store.execute("UPDATE meter_bindings SET meter = CASE meter WHEN 'M1' THEN 'M2' "
                                "ELSE 'M1' END WHERE meter IN ('M1', 'M2')")
        finally:
            await store.close()

    moved = tmp_path / "moved.db"
    shutil.copy(world.db, moved)
    asyncio.run(swap_meters(moved))
    swapped = runner.invoke(cli_app, [*args[:3], str(moved), *args[4:]])
    assert swapped.exit_code == 1 and "[point-assigned]" in swapped.output, swapped.output

    async def forge() -> None:
        store = await open_store(tampered)
        try:  # the logged message itself altered: its signature no longer holds
            row = next(r for r in await store.readings("gw-a", T0 + 1800, T0 + 1801, 10)
                       if r.meter == "M1")
            forged = row.message[:-1] + bytes([row.message[-1] ^ 1])
            await store.execute("UPDATE leaves SET data = ? WHERE id = ?", (forged, row.leaf_id))
        finally:
            await store.close()

    asyncio.run(forge())
    forged = runner.invoke(cli_app, args[:-2])  # without the log key: signatures only
    assert forged.exit_code == 1 and "FAIL" in forged.output, forged.output
    assert runner.invoke(cli_app, args).exit_code == 1  # with it: the bundle fails too
