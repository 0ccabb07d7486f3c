"""Parties and bindings in the store: validity periods, overlaps refused, keys kept as hashes,
and the ``meterchain backend access`` commands' errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.backend.access.cli import utc_seconds
from meterchain.backend.access.model import (
    BindingOverlap,
    InvalidParty,
    KeyKind,
    PartyExists,
    PointKind,
    Principal,
    UnknownParty,
    covers,
    overlaps,
    token_hash,
)
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.store import open_store
from meterchain.cli.main import app as cli
from meterchain.contract.humantime import human_interval, human_time
from typer.testing import CliRunner

from tests.support.humantime import assert_no_unix_seconds


async def _tables(path: Path) -> tuple[object, PartyTables]:
    store = await open_store(path)
    tables = PartyTables(store)
    await tables.add_utility("u1", "U", 0)
    await tables.add_utility("u2", "U2", 0)
    await tables.add_community("c1", "u1", "C", 0)
    await tables.add_community("c2", "u2", "C2", 0)
    await tables.add_household("h1", "c1", "H", 0)
    for point in ("mp1", "mp2"):
        await tables.add_metering_point(point, "u1", "c1", PointKind.CONSUMPTION, 0)
    return store, tables


async def test_bindings_refuse_overlaps_and_touching_periods_chain(tmp_path: Path) -> None:
    store, t = await _tables(tmp_path / "p.db")
    await t.bind_meter("mp1", "gw-1", "M1", 100, 200, 0)
    await t.bind_meter("mp1", "gw-1", "M2", 200, None, 0)  # [100,200) then [200, open): touching
    with pytest.raises(BindingOverlap, match="metering point mp1 is already bound"):
        await t.bind_meter("mp1", "gw-1", "M3", 150, 160, 0)
    with pytest.raises(BindingOverlap, match="meter gw-1/M1 is already bound"):
        await t.bind_meter("mp2", "gw-1", "M1", 0, 101, 0)  # one meter on two points at once
    await t.bind_meter("mp2", "gw-1", "M1", 0, 100, 0)  # before its time on mp1: fine
    assert await t.point_of("gw-1", "M1", 99) == "mp2"
    assert await t.point_of("gw-1", "M1", 100) == "mp1"
    assert await t.point_of("gw-1", "M1", 200) is None  # M1 left mp1 at 200
    assert await t.point_of("gw-1", "M2", 200) == "mp1"  # a reading ending at the exchange: new meter
    # Ending: only an open binding, only after its start; then the new meter can follow.
    with pytest.raises(InvalidParty, match="only end later"):
        await t.end_meter_binding("mp1", 200)
    ended = await t.end_meter_binding("mp1", 500)
    assert (ended.meter, ended.valid_from, ended.valid_to) == ("M2", 200, 500)
    with pytest.raises(UnknownParty, match="no open meter binding"):
        await t.end_meter_binding("mp1", 600)
    await t.bind_meter("mp1", "gw-2", "M9", 500, None, 0)
    with pytest.raises(InvalidParty, match="later than valid_from"):
        await t.bind_meter("mp2", "gw-3", "M3", 10, 10, 0)
    with pytest.raises(UnknownParty, match="no metering point mp9"):
        await t.bind_meter("mp9", "gw-3", "M3", 10, None, 0)
    # Occupancies: one household per point at a time; a household may hold many points.
    await t.add_household("h2", "c1", "H2", 0)
    await t.add_occupancy("mp1", "h1", 0, None, 0)
    await t.add_occupancy("mp2", "h1", 0, None, 0)
    with pytest.raises(BindingOverlap, match="already held by household h1"):
        await t.add_occupancy("mp1", "h2", 1000, None, 0)
    await t.end_occupancy("mp1", 1000)
    await t.add_occupancy("mp1", "h2", 1000, None, 0)
    assert [(o.household, o.valid_to) for o in await t.occupancies("mp1")] == [("h1", 1000), ("h2", None)]
    await store.close()  # type: ignore[attr-defined]


async def test_parties_validate_ids_and_references(tmp_path: Path) -> None:
    store, t = await _tables(tmp_path / "p.db")
    for bad in ("", "a b", "x" * 65, "mp1\n", "-lead", "ü"):
        with pytest.raises(InvalidParty):
            await t.add_metering_point(bad, "u1", None, PointKind.OTHER, 0)
    with pytest.raises(PartyExists):
        await t.add_utility("u1", "again", 0)
    with pytest.raises(UnknownParty, match="no utility nope"):
        await t.add_community("c9", "nope", "", 0)
    with pytest.raises(InvalidParty, match="belongs to utility u2"):
        await t.add_metering_point("mp9", "u1", "c2", PointKind.BATTERY, 0)
    await t.add_metering_point("DE0001234567890123456789012345678", "u1", None, PointKind.HEAT_PUMP, 0)
    with pytest.raises(InvalidParty, match="at least one"):
        await t.add_grant("g1", "", 10**9, [], [], 0)
    with pytest.raises(InvalidParty, match="future"):
        await t.add_grant("g1", "", 5, ["mp1"], [], 10)
    with pytest.raises(UnknownParty):
        await t.add_grant("g1", "", 10**9, ["mp1", "mp-unknown"], [], 0)
    assert await t.grant("g1") is None  # nothing of a refused grant was written
    with pytest.raises(InvalidParty, match="meter serial"):
        await t.bind_meter("mp1", "gw-1", "has space", 0, None, 0)
    await store.close()  # type: ignore[attr-defined]


async def test_keys_rotate_revoke_and_resolve_by_hash(tmp_path: Path) -> None:
    store, t = await _tables(tmp_path / "p.db")
    key, token = await t.create_key(KeyKind.HOUSEHOLD, "h1", "app", None, 100)
    assert (await t.key_for_token(token)) == key and await t.key_for_token(token + "x") is None
    rotated, token2 = await t.rotate_key(key.id, 60, 200)
    assert rotated.replaces == key.id and token2 != token
    old = await t.key_for_token(token)
    assert old is not None and old.expires == 260
    assert old.refusal(259) is None and f"expired at {human_time(260)}" in str(old.refusal(260))
    revoked = await t.revoke_key(rotated.id, 300)
    assert f"revoked at {human_time(300)}" in str(revoked.refusal(300))
    with pytest.raises(InvalidParty, match="only a valid key can be rotated"):
        await t.rotate_key(rotated.id, None, 301)
    await t.touch_key(key.id, 1000)
    await t.touch_key(key.id, 1030)  # within a minute: not written again
    assert (await t.key_for_token(token)).last_used == 1000  # type: ignore[union-attr]
    with pytest.raises(InvalidParty, match="needs a subject"):
        await t.create_key(KeyKind.UTILITY, None, "", None, 0)
    with pytest.raises(InvalidParty, match="no subject"):
        await t.create_key(KeyKind.ADMIN, "u1", "", None, 0)
    admin, _ = await t.create_key(KeyKind.ADMIN, None, "ops", None, 0)
    assert Principal.of_key(admin).is_admin and not Principal.of_key(key).is_admin
    async with store.connection.execute("SELECT token_hash FROM api_keys") as cur:  # type: ignore[attr-defined]
        assert token_hash(token) in {r[0] for r in await cur.fetchall()}
    await store.close()  # type: ignore[attr-defined]


_period = st.tuples(st.integers(0, 50), st.integers(1, 20), st.booleans()).map(
    lambda t: (t[0], None if t[2] else t[0] + t[1]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(periods=st.lists(st.tuples(st.sampled_from(["mp1", "mp2"]), st.sampled_from(["M1", "M2"]),
                                  _period), max_size=8))
def test_store_accepts_a_binding_exactly_when_it_overlaps_nothing(
    tmp_path_factory: pytest.TempPathFactory, periods: list[tuple[str, str, tuple[int, int | None]]]
) -> None:
    async def run() -> None:
        store, t = await _tables(tmp_path_factory.mktemp("hyp") / "p.db")
        accepted: list[tuple[str, str, int, int | None]] = []
        for point, meter, (start, stop) in periods:
            clash = any((p == point or m == meter) and overlaps(start, stop, s, e)
                        for p, m, s, e in accepted)
            try:
                await t.bind_meter(point, "gw", meter, start, stop, 0)
            except BindingOverlap:
                assert clash
            else:
                assert not clash
                accepted.append((point, meter, start, stop))
        for instant in range(0, 75, 3):
            for meter in ("M1", "M2"):
                owners = [p for p, m, s, e in accepted if m == meter and covers(s, e, instant)]
                assert await t.point_of("gw", meter, instant) == (owners[0] if owners else None)
        await store.close()  # type: ignore[attr-defined]

    asyncio.run(run())


def test_utc_seconds_reads_integers_and_zoned_iso_times() -> None:
    import typer

    assert utc_seconds("1700000000") == 1_700_000_000
    assert utc_seconds("2024-03-31T10:00:00+02:00") == utc_seconds("2024-03-31T08:00:00Z")
    for bad in ("2024-03-31T10:00", "yesterday", "-5"):
        with pytest.raises(typer.BadParameter):
            utc_seconds(bad)


def test_cli_builds_parties_and_explains_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    runner = CliRunner()

    def run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, ["backend", "access", *args, "--db", db])

    for args in (("add-utility", "u1", "--name", "Stadtwerk"), ("add-community", "c1", "--utility", "u1"),
                 ("add-household", "h1", "--community", "c1"),
                 ("add-point", "mp1", "--utility", "u1", "--community", "c1", "--kind", "ev-charger"),
                 ("bind-meter", "mp1", "--device", "gw-1", "--meter", "M1", "--from", "2024-01-01T00:00:00Z"),
                 ("move-in", "mp1", "--household", "h1", "--from", "0"),
                 ("grant", "g1", "--expires", "2999-01-01T00:00:00Z", "--community", "c1")):
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
    overlap = run("bind-meter", "mp1", "--device", "gw-1", "--meter", "M2", "--from", "1800000000")
    assert overlap.exit_code == 1 and "[overlap]" in overlap.output and "end that binding" in overlap.output
    ended = run("end-meter", "mp1", "--at", "1800000000")
    assert ended.exit_code == 0 and human_interval(1704067200, 1800000000) in ended.output
    assert_no_unix_seconds(ended.output, "meterchain backend access end-meter")
    assert run("bind-meter", "mp1", "--device", "gw-1", "--meter", "M2", "--from", "1800000000").exit_code == 0
    naive = run("move-out", "mp1", "--at", "2025-01-01T00:00")
    assert naive.exit_code == 2 and "no time zone" in naive.output
    kind = run("add-point", "mp2", "--utility", "u1", "--kind", "solar")
    assert kind.exit_code == 2 and "heat-pump" in kind.output
    missing = run("key-create", "--kind", "household", "--subject", "h9")
    assert missing.exit_code == 1 and "[not-found] no household h9" in missing.output
    made = run("key-create", "--kind", "household", "--subject", "h1", "--label", "phone")
    assert made.exit_code == 0 and "mck_" in made.output
    key_id = made.output.split()[1].rstrip(":")
    rotated = run("key-rotate", key_id, "--grace", "3600")
    assert rotated.exit_code == 0 and f"replaces {key_id}" in rotated.output
    assert run("key-revoke", key_id).exit_code == 0
    assert run("key-revoke", "k-000000000000").exit_code == 1
    listing = run("list")
    assert listing.exit_code == 0
    for text in ("utility u1", "metering point mp1 (ev-charger)", "mp1 <- meter gw-1/M2",
                 "mp1 <- household h1", "grant g1", f"key {key_id}", "revoked"):
        assert text in listing.output, text
    assert "mck_" not in listing.output  # tokens are never shown again
