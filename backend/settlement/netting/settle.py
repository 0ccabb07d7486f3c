"""Settle one interval: split local energy, price it, book money lines, and seal it with a digest.

Pure: the same community, input and listings give the same result and digest on any machine.
Without listings the interval is netted pro-rata at the community rule's price; with listings
(a mapping, possibly empty) it clears by call auctions in preference tiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .auction import clear_call_auction
from .digest import digest_document, settlement_document
from .errors import InputError
from .model import (
    MONEY_KINDS,
    RULE_VERSION,
    Community,
    CommunityTotals,
    IntervalInput,
    IntervalResult,
    Listing,
    MemberColumns,
    MoneyBalance,
    TierClearing,
)
from .pricing import local_price
from .prorata import split_prorata
from .rounding import div_half_even, div_half_even_array

NANO_PER_MICRO = 1000  # Wh × µ€/kWh = n€; 1000 n€ = 1 µ€


def settle_interval(
    community: Community,
    interval: IntervalInput,
    listings: Mapping[str, Listing] | None = None,
    *,
    revision: int = 0,
    supersedes: bytes | None = None,
) -> IntervalResult:
    """Settle `interval` for `community`; see docs/netting.md for each rule and invariant."""
    if interval.interval_start % community.interval_seconds:
        raise InputError("interval start is not on the community's interval grid",
                         interval_start=interval.interval_start,
                         interval_seconds=community.interval_seconds)
    if revision < 0 or (revision == 0) != (supersedes is None):
        raise InputError("revision 0 supersedes nothing; later revisions name their predecessor",
                         revision=revision)
    retail, feed_in = community.prices_at(interval.interval_start)
    imp, exp = interval.import_wh, interval.export_wh
    if listings is None:
        mode, rule = "prorata", community.rule.value
        bought_local, sold_local, local_wh = split_prorata(
            interval.interval_start, interval.member_ids, imp, exp)
        price, tier_name = local_price(community.rule, retail, feed_in, int(exp.sum()),
                                       int(imp.sum()), community.fixed_price)
        tiers: tuple[TierClearing, ...] = (TierClearing(tier_name, price, local_wh),)
        local_cost_n = bought_local * np.int64(price)
        local_revenue_n = sold_local * np.int64(price)
    else:
        mode, rule = "auction", "call_auction"
        bought_local, sold_local, local_cost_n, local_revenue_n, tiers = _clear_tiers(
            interval, listings, retail, feed_in)
    bought_grid = imp - bought_local
    sold_grid = exp - sold_local
    fees = community.fees
    exact = {
        "local_energy_bought": local_cost_n,
        "local_energy_sold": local_revenue_n,
        "grid_energy": bought_grid * np.int64(retail),
        "feed_in": sold_grid * np.int64(feed_in),
        "local_network_fee": bought_local * np.int64(fees.local_network_per_kwh),
        "grid_network_fee": bought_grid * np.int64(fees.grid_network_per_kwh),
        "platform_fee": bought_local * np.int64(fees.platform_per_kwh),
    }
    money = {kind: div_half_even_array(values, NANO_PER_MICRO) for kind, values in exact.items()}
    energy = {
        "import_wh": imp, "export_wh": exp,
        "bought_local_wh": bought_local, "bought_grid_wh": bought_grid,
        "sold_local_wh": sold_local, "sold_grid_wh": sold_grid,
        "quality": interval.quality,
    }
    for array in (*energy.values(), *money.values(), *exact.values()):
        array.flags.writeable = False
    columns = MemberColumns(energy, money, exact)
    balances = _balances(exact, money)
    totals = _totals(imp, exp, int(bought_local.sum()), community.co2_grams_per_kwh)
    fields: dict[str, Any] = {
        "community_id": community.community_id,
        "interval_start": interval.interval_start,
        "interval_seconds": community.interval_seconds,
        "revision": revision,
        "supersedes": supersedes,
        "mode": mode,
        "rule": rule,
        "rule_version": RULE_VERSION,
        "retail_price": retail,
        "feed_in_price": feed_in,
        "fees": fees,
        "co2_grams_per_kwh": community.co2_grams_per_kwh,
        "member_ids": interval.member_ids,
        "leaf_hashes": interval.leaf_hashes,
        "columns": columns,
        "tiers": tiers,
        "balances": balances,
        "totals": totals,
    }
    return IntervalResult(**fields, digest=digest_document(settlement_document(**fields)))


def _balances(exact: dict[str, np.ndarray], money: dict[str, np.ndarray]) -> tuple[MoneyBalance, ...]:
    """Per kind: members' rounded lines = counterparty (rounded once) + the rounding line."""
    out = []
    for kind, sign in MONEY_KINDS:
        members = sign * int(money[kind].sum())
        if kind.startswith("local_energy"):
            continue
        counterparty = sign * div_half_even(int(exact[kind].sum()), NANO_PER_MICRO)
        out.append(MoneyBalance(kind, members, counterparty, members - counterparty))
    # Local energy moves only between members: exact payments equal exact receipts, so the
    # counterparty is 0 and the whole difference of the rounded lines is the rounding line.
    local = int(money["local_energy_bought"].sum()) - int(money["local_energy_sold"].sum())
    out.insert(0, MoneyBalance("local_energy", local, 0, local))
    return tuple(out)


def _totals(imp: np.ndarray, exp: np.ndarray, local_wh: int, co2_per_kwh: int) -> CommunityTotals:
    demand, supply = int(imp.sum()), int(exp.sum())
    return CommunityTotals(
        demand_wh=demand,
        supply_wh=supply,
        local_wh=local_wh,
        grid_import_wh=demand - local_wh,
        grid_export_wh=supply - local_wh,
        self_sufficiency_ppm=div_half_even(local_wh * 1_000_000, demand) if demand else None,
        self_consumption_ppm=div_half_even(local_wh * 1_000_000, supply) if supply else None,
        co2_avoided_g=div_half_even(local_wh * co2_per_kwh, 1000),
    )


def _clear_tiers(
    interval: IntervalInput, listings: Mapping[str, Listing], retail: int, feed_in: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[TierClearing, ...]]:
    """Partner groups, then green, then the rest: each tier its own call auction and price."""
    ids = interval.member_ids
    n = len(ids)
    bid = np.full(n, retail, np.int64)
    ask = np.full(n, feed_in, np.int64)
    green_source = np.zeros(n, bool)
    green_only = np.zeros(n, bool)
    group: list[str | None] = [None] * n
    index = {m: i for i, m in enumerate(ids)} if listings else {}
    for member_id in sorted(listings):
        listing = listings[member_id]
        if listing.member_id != member_id:
            raise InputError("listing filed under another member's id", key=member_id,
                             member_id=listing.member_id)
        i = index.get(member_id)
        if i is None:
            continue  # a standing listing of a member without energy in this interval
        if listing.buy_limit is not None:
            bid[i] = min(max(listing.buy_limit, feed_in - 1), retail)
        if listing.sell_ask is not None:
            ask[i] = max(min(listing.sell_ask, retail + 1), feed_in)
        green_source[i] = listing.green_source
        green_only[i] = listing.green_only
        group[i] = listing.partner_group
    want = interval.import_wh.copy()
    have = interval.export_wh.copy()
    cost = np.zeros(n, np.int64)
    revenue = np.zeros(n, np.int64)
    tiers: list[TierClearing] = []
    everyone = np.arange(n, dtype=np.int64)

    def clear(name: str, buyers: np.ndarray, sellers: np.ndarray) -> None:
        result = clear_call_auction(buyers, bid[buyers], want[buyers],
                                    sellers, ask[sellers], have[sellers])
        if result.price is None:
            return
        want[buyers] -= result.bid_fills
        have[sellers] -= result.ask_fills
        cost[buyers] += result.bid_fills * np.int64(result.price)
        revenue[sellers] += result.ask_fills * np.int64(result.price)
        pairs = tuple((ids[b], ids[s], wh) for b, s, wh in result.pairs)
        tiers.append(TierClearing(name, result.price, result.volume_wh, pairs))

    members_of: dict[str, list[int]] = {}
    for i, g in enumerate(group):
        if g is not None:
            members_of.setdefault(g, []).append(i)
    for g in sorted(members_of):
        members = np.asarray(members_of[g], np.int64)
        clear(f"partners:{g}", members, members)
    clear("green", everyone[green_only], everyone[green_source])
    clear("rest", everyone[~green_only], everyone)
    return (interval.import_wh - want, interval.export_wh - have, cost, revenue, tuple(tiers))

