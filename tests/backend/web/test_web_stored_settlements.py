"""The dashboard's bill and trades come from the settlements the runner stored, for the metering
point the household holds: the same bill the runner issued, the same interval results."""

from __future__ import annotations

from pathlib import Path

import pytest
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.web.stored_settlements import StoredSettlements

from tests.support.settlement import (
    COMMUNITY,
    FLOW,
    MEMBERS,
    T0,
    close_site,
    community,
    readings_at,
)

pytestmark = pytest.mark.timeout(60)


async def test_a_households_bill_and_trades_are_its_metering_points_stored_settlements(tmp_path: Path) -> None:
    site = await community(tmp_path)
    try:
        parties = PartyTables(site.admin)
        await parties.add_household("h-pv", COMMUNITY, "PV family", T0)
        await parties.add_occupancy("mp-2", "h-pv", T0, None, T0)
        await readings_at(site, T0, scale=0)
        for k in range(1, 9):  # November closes at T0 + 7200
            await readings_at(site, T0 + 900 * k)
        report = await site.runner.settle_community(COMMUNITY, T0 + 7200 + 1800)
        assert report.bills == 3

        stored = StoredSettlements(lambda: site.admin)
        month_start, month_end = T0 + 7200 - 30 * 86400, T0 + 7200
        member = await stored.member_for("h-pv", month_start, month_end)
        assert member == "mp-2"
        assert await stored.member_for("h-nobody", month_start, month_end) == "h-nobody"

        results = await stored.results(member, T0, T0 + 7200)
        assert [r.interval_start for r in results] == [T0 + 900 * k for k in range(8)]
        sold = sum(int(r.columns.energy["sold_local_wh"][r.member_ids.index("mp-2")]) for r in results)
        assert sold == 8 * 600  # D = 680 Wh > S = 600 Wh: all of the PV export is sold locally

        bill = await stored.bill(member, month_start, month_end)
        issued = await site.tables.latest_bill(COMMUNITY, "mp-2", month_start)
        assert bill is not None and issued is not None
        assert bill.total == issued.total and bill.savings == issued.savings
        assert sum(line.amount for line in bill.lines) == bill.total
        assert await stored.bill("mp-unknown", month_start, month_end) is None
    finally:
        await close_site(site)


async def test_intervals_settled_again_after_a_late_reading_are_late(tmp_path: Path) -> None:
    """mp-2 is silent past the deadline: its interval settles without it; its reading then comes
    in late, the interval is settled again, and the pages mark it late (and only it)."""
    site = await community(tmp_path)
    try:
        await readings_at(site, T0, scale=0)
        await readings_at(site, T0 + 900, skip=("mp-2",))
        await site.runner.settle_community(COMMUNITY, T0 + 900 + 1800 + 1)  # past the deadline
        stored = StoredSettlements(lambda: site.admin)
        assert await stored.late("mp-2", T0, T0 + 3600) == set()
        point, device, meter = next(m for m in MEMBERS if m[0] == "mp-2")
        imp, exp = FLOW[point]
        await site.send(await site.step(device, meter, T0 + 900, imp, exp))  # the late reading
        report = await site.runner.settle_community(COMMUNITY, T0 + 900 + 1800 + 60)
        assert (T0, 1, "late-reading") in report.settled
        assert await stored.late("mp-2", T0, T0 + 3600) == {T0}
        assert await stored.late("mp-unknown", T0, T0 + 3600) == set()
    finally:
        await close_site(site)
