"""Wallets: postings are the settlement's money lines, exactly, and a balance is their sum.

A pure hypothesis run builds each stored revision's postings from random communities, listings,
occupancies and re-settlements; a stored run drives the real runner over signed readings (a silent
meter settled at the deadline and re-settled by its late reading, a move mid-month, a month's
bills) and checks the wallet tables against the settlement tables and the digests' balances.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.settlement.netting import IntervalInput, Listing, resettle, settle_interval
from meterchain.backend.settlement.netting.model import MONEY_KINDS
from meterchain.backend.settlement.runner import SettledInput, new_settlement, rebuild
from meterchain.backend.settlement.tables import Terms
from meterchain.backend.settlement.wallet import (
    WalletError,
    WalletTables,
    holder_at,
    settlement_postings,
)

from tests.support.settlement import COMMUNITY, MEMBERS, T0, close_site, community

pytestmark = pytest.mark.timeout(300)
SIGN = dict(MONEY_KINDS)
BALANCE_OF = {"local_energy_bought": "local_energy", "local_energy_sold": "local_energy"}
FAST = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
STORED = settings(max_examples=6, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _balance_kind(line: str) -> str:
    return BALANCE_OF.get(line, line)


@st.composite
def terms(draw: st.DrawFn) -> Terms:
    a, b = draw(st.integers(-50_000, 900_000)), draw(st.integers(-50_000, 900_000))
    return Terms("c", 0, market=draw(st.sampled_from(["prorata", "auction"])),
                 rule=draw(st.sampled_from(["mid_market", "sdr"])),
                 retail_price=max(a, b), feed_in_price=min(a, b),
                 local_network_fee=draw(st.integers(0, 90_000)),
                 grid_network_fee=draw(st.integers(0, 90_000)),
                 platform_fee=draw(st.integers(0, 9_000)))


energy = st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 2_000_000))


@st.composite
def scenario(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    t = draw(terms())
    ids = [f"mp-{k}" for k in range(draw(st.integers(1, 7)))]
    occupants = {m: draw(st.sampled_from(["h-a", "h-b", "h-c", None])) for m in ids}
    intervals = []
    for k in range(draw(st.integers(1, 10))):
        rows = [(draw(energy), draw(energy)) for _ in ids]
        listings = None
        if t.market == "auction":
            listings = {m: Listing(m, draw(st.none() | st.integers(0, 900_000)),
                                   draw(st.none() | st.integers(0, 900_000)), draw(st.booleans()),
                                   draw(st.booleans()),
                                   draw(st.none() | st.sampled_from(["g1", "g2"])))
                        for m in ids if draw(st.booleans())}
        late = [(draw(energy), draw(energy)) for _ in ids] if draw(st.booleans()) else None
        intervals.append((900 * (k + 1), rows, listings, late))
    return t, ids, occupants, intervals


@FAST
@given(scenario())
def test_postings_are_the_money_lines_and_reproduce_the_digests_balances(case) -> None:  # type: ignore[no-untyped-def]
    t, ids, occupants, intervals = case
    occupancies = [(m, h, 0, None) for m, h in occupants.items() if h is not None]
    expected: dict[tuple[str, str], int] = defaultdict(int)  # (holder, line) from the lines
    posted: dict[tuple[str, str], int] = defaultdict(int)
    for start, rows, listings, late in intervals:
        interval = IntervalInput.from_columns(start, ids, [r[0] for r in rows],
                                              [r[1] for r in rows])
        settled = SettledInput(t, t.retail_price or 0, t.feed_in_price or 0, interval, listings)
        result = settle_interval(settled.community(), interval, listings)
        items = [(new_settlement(result, settled, "complete", 1, None), result)]
        final = result
        if late is not None:
            again = IntervalInput.from_columns(start, ids, [r[0] for r in late],
                                               [r[1] for r in late])
            final, delta = resettle(result, settled.community(), again, listings)
            items.append((new_settlement(final, SettledInput(t, t.retail_price or 0,
                                                             t.feed_in_price or 0, again,
                                                             listings),
                                         "late-reading", 2, delta, result), final))
        per_kind: dict[str, int] = defaultdict(int)
        for item, _ in items:
            for line in item.lines:
                member = str(line[0])
                holder = holder_at(occupancies, member, start)[1]
                row = dict(zip([k for k, _ in MONEY_KINDS], line[9:], strict=True))
                for kind, sign in MONEY_KINDS:
                    expected[(holder, kind)] -= sign * int(row[kind])
            for p in settlement_postings("c", item, occupancies):
                holder, line, amount = str(p[1]), str(p[5]), int(p[10])  # type: ignore[call-overload]
                if p[0] != "community":
                    posted[(holder, line)] += amount
                per_kind[_balance_kind(line)] += amount
        # every posting of the interval (households, points, community) = −counterparty in force
        for balance in final.balances:
            assert per_kind.get(balance.kind, 0) == -balance.counterparty, balance
    assert {k: v for k, v in posted.items() if v} == {k: v for k, v in expected.items() if v}


async def _stored_case(flows: list[list[tuple[int, int]]], market: str, silent_at: int | None,
                       asks: dict[str, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = await community(Path(tmp), market=market)
        try:
            parties = PartyTables(site.admin)
            await parties.add_household("h-a", COMMUNITY, "A", T0)
            await parties.add_household("h-b", COMMUNITY, "B", T0)
            await parties.add_household("h-c", COMMUNITY, "C", T0)
            await parties.add_occupancy("mp-1", "h-a", T0, None, T0)
            await parties.add_occupancy("mp-2", "h-a", T0, None, T0)  # two points, one wallet
            await parties.add_occupancy("mp-3", "h-b", T0, T0 + 3 * 900, T0)  # moves out
            await parties.add_occupancy("mp-3", "h-c", T0 + 3 * 900, None, T0)  # the next one
            for member, ask in asks.items():
                await site.tables.post_listing(COMMUNITY, member, T0, None, ask, True, False,
                                               None, T0)
            messages = [await site.step(d, m, T0, 0, 0) for _, d, m in MEMBERS]
            await site.send(*messages)
            n = len(flows)
            for k, flow in enumerate(flows, start=1):
                out = []
                for (point, device, meter), (imp, exp) in zip(MEMBERS, flow, strict=True):
                    if point == "mp-3" and silent_at is not None and silent_at <= k < n:
                        site.registers.setdefault((device, meter), [1_000_000, 50_000])
                        site.registers[(device, meter)][0] += imp
                        site.registers[(device, meter)][1] += exp
                        continue
                    out.append(await site.step(device, meter, T0 + 900 * k, imp, exp))
                await site.send(*out)
                if silent_at is not None and k == n - 1:  # the deadline passes without mp-3
                    await site.runner.settle_community(COMMUNITY, T0 + 900 * k + 1800)
            final = T0 + 900 * n + 1800
            await site.runner.settle_community(COMMUNITY, final)
            await site.runner.settle_community(COMMUNITY, final)  # bills of November
            wallet = WalletTables(site.admin)

            # each holder's postings = its members' lines and delta lines, by occupancy
            lines = await site.tables.lines(COMMUNITY, 0, 2**62)
            occupancies = [(o.metering_point, o.household, o.valid_from, o.valid_to)
                           for o in await parties.occupancies()]
            expected: dict[str, int] = defaultdict(int)
            for start, _, line in lines:
                holder = holder_at(occupancies, str(line["member"]), start)[1]
                for kind, sign in MONEY_KINDS:
                    expected[holder] -= sign * int(line[kind] or 0)
            bills = await site.tables.bills(COMMUNITY)
            for bill in bills:
                fee_vat = sum(int(x["amount"]) for x in bill.lines  # type: ignore[call-overload]
                              if x["kind"] in ("monthly_fee", "vat"))
                holder = {"mp-1": "h-a", "mp-2": "h-a"}.get(bill.member, "h-c")  # longest in November
                expected[holder] -= fee_vat
            for holder in ("h-a", "h-b", "h-c"):
                postings = await wallet.postings("household", holder)
                assert sum(p.amount for p in postings) == expected[holder]
                assert await wallet.balance("household", holder) == expected[holder]

            # every posting of an interval, with the community's, = −counterparty per kind
            rows = await site.tables.revisions(COMMUNITY, 0, 2**62)
            totals = await wallet.totals_by_interval(COMMUNITY, 0, 2**62)
            in_force = {}
            for row in rows:
                in_force[row.interval_start] = rebuild(row)[1]
            summed: dict[tuple[int, str], int] = defaultdict(int)
            for (start, _, line), amount in totals.items():
                summed[(start, _balance_kind(line))] += amount
            for start, result in in_force.items():
                for balance in result.balances:
                    assert summed.get((start, balance.kind), 0) == -balance.counterparty

            # a month's postings of mp-1 and mp-2 (both h-a's, whole month) = their bills' totals
            november = [b for b in bills if b.member in ("mp-1", "mp-2")]
            if november:
                start = november[0].period_start
                posted = [p for p in await wallet.postings("household", "h-a", start,
                                                           november[0].period_end)
                          if p.source != "payment"]
                assert sum(p.amount for p in posted) == -sum(b.total for b in november)

            # payments and refunds are postings too: the balance is their sum, never edited
            before = await wallet.balance("household", "h-a")
            await wallet.record_payment("h-a", "payment", 25_000_000, "SEPA 7", "admin", final)
            await wallet.record_payment("h-a", "refund", 5_000_000, None, "admin", final)
            assert await wallet.balance("household", "h-a") == before + 20_000_000
            assert sum(p.amount for p in await wallet.postings("household", "h-a")) == before + 20_000_000
        finally:
            await close_site(site)


@STORED
@given(st.lists(st.lists(st.tuples(st.integers(0, 900), st.integers(0, 900)), min_size=3,
                         max_size=3), min_size=3, max_size=9),
       st.sampled_from(["prorata", "auction"]), st.none() | st.integers(1, 3),
       st.dictionaries(st.sampled_from(["mp-1", "mp-2", "mp-3"]), st.integers(0, 400_000)))
def test_stored_postings_follow_the_runner_through_deadlines_deltas_moves_and_bills(
        flows, market, silent_at, asks) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(_stored_case(flows, market, silent_at, asks))


async def test_payments_are_checked_and_a_balance_has_no_other_source(tmp_path: Path) -> None:
    site = await community(tmp_path)
    try:
        await PartyTables(site.admin).add_household("h-a", COMMUNITY, "A", T0)
        wallet = WalletTables(site.admin)
        for kind, amount in (("gift", 1), ("payment", 0), ("refund", -5), ("payment", 10**13)):
            with pytest.raises(WalletError):
                await wallet.record_payment("h-a", kind, amount, None, "admin", T0)
        from meterchain.backend.access.model import UnknownParty
        with pytest.raises(UnknownParty):
            await wallet.record_payment("h-nobody", "payment", 1, None, "admin", T0)
        assert await wallet.balance("household", "h-a") == 0
        posting = await wallet.record_payment("h-a", "payment", 1_000, "ref", "admin", T0)
        assert posting.amount == 1_000 and posting.source == "payment"
        assert await wallet.balance("household", "h-a") == 1_000
    finally:
        await close_site(site)
