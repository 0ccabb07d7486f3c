"""The settlement runner over a real store: complete intervals, a deadline with a silent meter,
the late reading that re-settles as delta lines, settlement leaves in the log, monthly bills."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meterchain.backend.settlement.netting import Quality
from meterchain.backend.settlement.runner import SettledInput, rebuild
from meterchain.contract.leaves import SettlementLeaf, parse_leaf

from tests.support.settlement import (
    COMMUNITY,
    T0,
    close_site,
    community,
    readings_at,
)

pytestmark = pytest.mark.timeout(60)


async def test_complete_intervals_settle_at_once_and_their_leaves_enter_the_log(tmp_path: Path) -> None:
    site = await community(tmp_path)
    try:
        await readings_at(site, T0, scale=0)  # baselines
        await readings_at(site, T0 + 900)
        await readings_at(site, T0 + 1800)
        site.runner.clock = lambda: T0 + 1800
        [report] = await site.runner.run_once()
        assert report.settled == [(T0, 0, "complete"), (T0 + 900, 0, "complete")]
        rows = await site.tables.in_force(COMMUNITY, T0, T0 + 1800)
        first = rows[T0]
        assert (first.demand_wh, first.supply_wh, first.local_wh) == (680, 600, 600)
        settled, result = rebuild(first)
        assert settled.interval.member_ids == ("mp-1", "mp-2", "mp-3")
        assert len(settled.interval.leaf_hashes) == 6  # two readings per member
        lines = await site.tables.lines(COMMUNITY, T0, T0 + 900)
        assert sum(line["bought_local_wh"] for _, _, line in lines) == 600
        assert sum(line["sold_local_wh"] for _, _, line in lines) == 600
        data, _, _ = await site.tables.leaf_data(first.leaf_id)
        leaf = parse_leaf(data)
        assert isinstance(leaf, SettlementLeaf)
        assert leaf.fields["digest"] == result.digest and leaf.fields["revision"] == 0
        assert await site.tables.origin(COMMUNITY, T0, 0) == [("mp-2", 600)]
        await site.sealer.seal_all()
        sealed = await site.tables.settlement(COMMUNITY, T0)
        assert sealed is not None and sealed.leaf_index is not None
        again = await site.runner.settle_community(COMMUNITY, T0 + 1800)
        assert again.settled == []  # nothing new: nothing written
    finally:
        await close_site(site)


async def test_a_silent_meter_settles_at_the_deadline_and_its_late_reading_adds_delta_lines(
    tmp_path: Path,
) -> None:
    site = await community(tmp_path)
    try:
        await readings_at(site, T0, scale=0)
        await readings_at(site, T0 + 900)
        await readings_at(site, T0 + 1800, skip=("mp-3",))
        await readings_at(site, T0 + 2700, skip=("mp-3",))
        waiting = await site.runner.settle_community(COMMUNITY, T0 + 2700)
        assert waiting.settled == [(T0, 0, "complete")] and waiting.waiting == 2
        deadline = await site.runner.settle_community(COMMUNITY, T0 + 1800 + 1800)
        assert deadline.settled == [(T0 + 900, 0, "deadline")]
        missing = await site.tables.settlement(COMMUNITY, T0 + 900)
        assert missing is not None and missing.missing == 1
        # mp-3 speaks again: its reading spans three intervals, spread evenly and re-settled.
        await site.send(await site.step("gw-b", "M3", T0 + 3600, 750, 0))
        await readings_at(site, T0 + 3600, skip=("mp-3",))
        late = await site.runner.settle_community(COMMUNITY, T0 + 3600)
        assert (T0 + 900, 1, "late-reading") in late.settled
        assert (T0 + 1800, 0, "complete") in late.settled
        revised = await site.tables.settlement(COMMUNITY, T0 + 900)
        assert revised is not None and revised.revision == 1
        assert revised.supersedes == missing.digest and revised.missing == 0
        settled, _ = rebuild(revised)
        k = settled.interval.member_ids.index("mp-3")
        assert int(settled.interval.import_wh[k]) == 250
        assert int(settled.interval.quality[k]) == Quality.SUBSTITUTED
        deltas = [line for _, rev, line in await site.tables.lines(COMMUNITY, T0 + 900, T0 + 1800)
                  if rev == 1]
        assert deltas and all(line["is_delta"] == 1 for line in deltas)
        assert sum(d["bought_local_wh"] for d in deltas) == sum(d["sold_local_wh"] for d in deltas)
        for d in deltas:
            assert d["import_wh"] == d["bought_local_wh"] + d["bought_grid_wh"]
            assert d["export_wh"] == d["sold_local_wh"] + d["sold_grid_wh"]
        mp3 = next(d for d in deltas if d["member"] == "mp-3")
        assert mp3["import_wh"] == 250
        # old lines + deltas = the revision in force
        old = {line["member"]: line for _, rev, line in
               await site.tables.lines(COMMUNITY, T0 + 900, T0 + 1800) if rev == 0}
        _, new_result = rebuild(revised)
        for d in deltas:
            row = new_result.member_row(d["member"])
            assert old[d["member"]]["grid_energy"] + d["grid_energy"] == row["grid_energy"]
        leaf = parse_leaf((await site.tables.leaf_data(revised.leaf_id))[0])
        assert isinstance(leaf, SettlementLeaf) and leaf.fields["supersedes"] == missing.digest
        assert SettledInput.decode(revised.input).interval.interval_start == T0 + 900
    finally:
        await close_site(site)


async def test_a_closed_month_is_billed_and_a_late_reading_issues_a_new_bill_version(
    tmp_path: Path,
) -> None:
    site = await community(tmp_path)
    try:
        await readings_at(site, T0, scale=0)
        for k in range(1, 9):  # 22:00 .. 24:00 UTC: November closes at T0 + 7200
            await readings_at(site, T0 + 900 * k, skip=("mp-3",) if k == 8 else ())
        early = await site.runner.settle_community(COMMUNITY, T0 + 7200 + 900)
        assert early.bills == 0 and early.waiting  # mp-3's last November interval is not in
        report = await site.runner.settle_community(COMMUNITY, T0 + 7200 + 1800)
        assert report.settled == [(T0 + 6300, 0, "deadline")] and report.bills == 3
        bills = await site.tables.bills(COMMUNITY)
        assert {b.member for b in bills} == {"mp-1", "mp-2", "mp-3"}
        for bill in bills:
            assert bill.version == 0 and bill.period_end == T0 + 7200
            assert sum(int(line["amount"]) for line in bill.lines) == bill.total  # type: ignore[arg-type]
        by_member = {b.member: b for b in bills}
        assert by_member["mp-1"].energy["import_wh"] == 8 * 400
        assert by_member["mp-3"].energy["import_wh"] == 7 * 250  # the last interval MISSING
        assert by_member["mp-2"].energy["export_wh"] == 8 * 600
        assert (await site.runner.settle_community(COMMUNITY, T0 + 7200 + 1800)).bills == 0
        # mp-3's reading at 00:15 spans 23:45-00:15: November's last interval is re-settled
        # and November's bills are issued again as version 1 (version 0 stays).
        await site.send(await site.step("gw-b", "M3", T0 + 8100, 500, 0))
        late = await site.runner.settle_community(COMMUNITY, T0 + 7200 + 1800)
        assert (T0 + 6300, 1, "late-reading") in late.settled and late.bills == 3
        november = {b.member: b for b in await site.tables.bills(COMMUNITY, period_start=T0 - 29 * 86400 - 22 * 3600)}
        assert november["mp-3"].version == 1
        assert november["mp-3"].energy["import_wh"] == 8 * 250
        old = await site.tables.latest_bill(COMMUNITY, "mp-1", november["mp-1"].period_start)
        assert old is not None and old.version == 1
    finally:
        await close_site(site)


async def test_dynamic_prices_and_listings_enter_the_settlement_and_bad_readings_are_excluded(
    tmp_path: Path,
) -> None:
    from meterchain.backend.settlement.netting import parse_price_csv
    from meterchain.backend.settlement.runner import schedule_rows

    site = await community(tmp_path, retail_price=None, market="auction")
    try:
        csv = "start,price\n" + "\n".join(f"{T0 + 3600 * h},{250 + 10 * h}" for h in range(1))
        rows = schedule_rows(parse_price_csv(csv, unit="EUR/MWh"))
        await site.tables.add_prices(COMMUNITY, "retail", rows, T0)  # 22:00-23:00 only
        await site.tables.post_listing(COMMUNITY, "mp-2", T0, None, 150_000, True, False, None, T0)
        await site.tables.post_listing(COMMUNITY, "mp-1", T0, 200_000, None, False, True, None, T0)
        await readings_at(site, T0, scale=0)
        for k in range(1, 6):
            await readings_at(site, T0 + 900 * k)
        # A reading off the 15-minute grid, and one whose register runs backwards.
        await site.send(site.message("gw-b", "M3", T0 + 5 * 900 + 60, 2_000_000, 60_000))
        await site.send(site.message("gw-a", "M1", T0 + 6 * 900, 1, 0))
        report = await site.runner.settle_community(COMMUNITY, T0 + 6 * 900)
        assert [s for s, _, _ in report.settled] == [T0, T0 + 900, T0 + 1800, T0 + 2700]
        assert any("no retail price" in p for p in report.problems)  # 23:00 on: not imported
        first = await site.tables.settlement(COMMUNITY, T0)
        assert first is not None and first.mode == "auction" and first.retail_price == 250_000
        tiers = json.loads(first.tiers)
        assert tiers[0][0] == "green" and tiers[0][3] == [["mp-1", "mp-2", 400]]
        reasons = {(x.device, x.reason) for x in await site.tables.exclusions(COMMUNITY)}
        assert reasons == {("gw-b", "off-grid"), ("gw-a", "register")}
    finally:
        await close_site(site)
