"""Independent checks of the netting invariants (Fractions and plain loops, not the engine's code)."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

from meterchain.backend.settlement.netting import (
    Community,
    IntervalInput,
    IntervalResult,
    Listing,
    settle_interval,
)
from meterchain.backend.settlement.netting.digest import digest_document, settlement_document
from meterchain.backend.settlement.netting.model import MONEY_KINDS

SIGN = dict(MONEY_KINDS)


def half_even(numerator: int, denominator: int) -> int:
    """Nearest integer, ties to even (round-half-up, then step back from odd ties)."""
    nearest = (2 * numerator + denominator) // (2 * denominator)
    if (2 * numerator) % (2 * denominator) == denominator and nearest % 2:
        nearest -= 1
    return nearest


def check_result(
    community: Community,
    inp: IntervalInput,
    result: IntervalResult,
    listings: dict[str, Listing] | None = None,
    *,
    audit_digest: bool = True,
) -> None:
    """Every invariant of docs/netting.md that one interval's result must hold exactly."""
    e, x, m = result.columns.energy, result.columns.exact, result.columns.money
    n = len(inp.member_ids)
    imp = [int(v) for v in inp.import_wh]
    exp = [int(v) for v in inp.export_wh]
    bl, bg = [int(v) for v in e["bought_local_wh"]], [int(v) for v in e["bought_grid_wh"]]
    sl, sg = [int(v) for v in e["sold_local_wh"]], [int(v) for v in e["sold_grid_wh"]]
    demand, supply = sum(imp), sum(exp)
    p_g, p_f = community.prices_at(inp.interval_start)
    assert (result.retail_price, result.feed_in_price) == (p_g, p_f)
    # energy conservation
    assert sum(bl) == sum(sl) == result.totals.local_wh
    for i in range(n):
        assert bl[i] + bg[i] == imp[i] and sl[i] + sg[i] == exp[i]
        assert min(bl[i], bg[i], sl[i], sg[i]) >= 0
    local = sum(bl)
    assert local <= min(demand, supply)
    t = result.totals
    assert (t.demand_wh, t.supply_wh, t.grid_import_wh, t.grid_export_wh) == (
        demand, supply, demand - local, supply - local)
    # prices within [p_f, p_g]; tier volumes add up to L
    assert sum(tier.volume_wh for tier in result.tiers) == local
    for tier in result.tiers:
        assert p_f <= tier.price <= p_g
    # money: exact n€ and rounded µ€ recomputed independently
    if result.mode == "prorata":
        assert local == min(demand, supply)
        price = result.tiers[0].price
        for i in range(n):
            for share, own, total in ((bl[i], imp[i], demand), (sl[i], exp[i], supply)):
                if total:
                    exact = Fraction(local * own, total)
                    assert share in (exact.__floor__(), exact.__ceil__())
        local_cost = [bl[i] * price for i in range(n)]
        local_revenue = [sl[i] * price for i in range(n)]
    else:
        local_cost, local_revenue = _check_auction(community, inp, result, listings or {}, p_g, p_f)
    fees = community.fees
    expected_exact = {
        "local_energy_bought": local_cost,
        "local_energy_sold": local_revenue,
        "grid_energy": [v * p_g for v in bg],
        "feed_in": [v * p_f for v in sg],
        "local_network_fee": [v * fees.local_network_per_kwh for v in bl],
        "grid_network_fee": [v * fees.grid_network_per_kwh for v in bg],
        "platform_fee": [v * fees.platform_per_kwh for v in bl],
    }
    for kind, values in expected_exact.items():
        assert [int(v) for v in x[kind]] == values, kind
        assert [int(v) for v in m[kind]] == [half_even(v, 1000) for v in values], kind
    # money balances per kind to the micro-euro, with one bounded rounding line
    balances = {b.kind: b for b in result.balances}
    local_line = balances["local_energy"]
    assert sum(local_cost) == sum(local_revenue)
    assert local_line.counterparty == 0
    assert local_line.members == int(m["local_energy_bought"].sum()) - int(
        m["local_energy_sold"].sum()) == local_line.rounding
    lines = sum(1 for v in bl if v) + sum(1 for v in sl if v)
    assert 2 * abs(local_line.rounding) <= lines
    for kind, values in expected_exact.items():
        if kind.startswith("local_energy"):
            continue
        b = balances[kind]
        assert b.counterparty == SIGN[kind] * half_even(sum(values), 1000)
        assert b.members == SIGN[kind] * sum(half_even(v, 1000) for v in values)
        assert b.members == b.counterparty + b.rounding
        assert 2 * abs(b.rounding) <= sum(1 for v in values if v) + 1
    # fee fairness: when local fees ≤ grid fees, a local kWh never costs a buyer more than a grid
    # kWh, and no seller gets less than p_f for a local kWh
    if fees.local_per_kwh <= fees.grid_network_per_kwh:
        for i in range(n):
            all_in = local_cost[i] + bl[i] * fees.local_per_kwh
            assert all_in <= bl[i] * (p_g + fees.grid_network_per_kwh)
            assert local_revenue[i] >= sl[i] * p_f
    # identical members differ by at most 1 Wh
    by_profile: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in range(n):
        by_profile[(imp[i], exp[i])].append(i)
    if result.mode == "prorata":
        for group in by_profile.values():
            assert max(bl[i] for i in group) - min(bl[i] for i in group) <= 1
            assert max(sl[i] for i in group) - min(sl[i] for i in group) <= 1
    # an auditor re-encoding the published fields gets the digest
    if not audit_digest:
        return
    fields = {k: getattr(result, k) for k in (
        "community_id", "interval_start", "interval_seconds", "revision", "supersedes", "mode",
        "rule", "rule_version", "retail_price", "feed_in_price", "fees", "co2_grams_per_kwh",
        "member_ids", "leaf_hashes", "columns", "tiers", "balances", "totals")}
    assert digest_document(settlement_document(**fields)) == result.digest


def _check_auction(community, inp, result, listings, p_g, p_f):
    ids = inp.member_ids
    pos = {mid: i for i, mid in enumerate(ids)}
    n = len(ids)
    cost = [0] * n
    revenue = [0] * n
    bought = [0] * n
    sold = [0] * n
    for tier in result.tiers:
        buyers, sellers = set(), set()
        for buyer, seller, wh in tier.pairs:
            assert wh > 0
            buyers.add(buyer)
            sellers.add(seller)
            limit = listings.get(buyer, Listing(buyer)).buy_limit
            ask = listings.get(seller, Listing(seller)).sell_ask
            assert (p_g if limit is None else limit) >= tier.price
            assert (p_f if ask is None else ask) <= tier.price
            b, s = listings.get(buyer, Listing(buyer)), listings.get(seller, Listing(seller))
            if tier.name == "green":
                assert b.green_only and s.green_source
            elif tier.name.startswith("partners:"):
                assert b.partner_group == s.partner_group == tier.name.split(":", 1)[1]
            else:
                assert tier.name == "rest" and not b.green_only
            cost[pos[buyer]] += wh * tier.price
            revenue[pos[seller]] += wh * tier.price
            bought[pos[buyer]] += wh
            sold[pos[seller]] += wh
        assert sum(wh for _, _, wh in tier.pairs) == tier.volume_wh
        assert len(tier.pairs) <= len(buyers) + len(sellers) - 1
    assert bought == [int(v) for v in result.columns.energy["bought_local_wh"]]
    assert sold == [int(v) for v in result.columns.energy["sold_local_wh"]]
    return cost, revenue


def settle_checked(community, inp, listings=None):
    result = settle_interval(community, inp, listings)
    check_result(community, inp, result, listings)
    return result
