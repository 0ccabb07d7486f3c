"""What the bill, trades and community pages read: settled intervals and bills, behind one protocol.

The netting engine (``backend/settlement/netting``) is pure; storing its results is another part's job. The
pages depend only on :class:`Settlements`, so they fill in the day a stored implementation is
handed to :func:`meterchain.backend.web.app.mount_web`; until then :class:`NoSettlements` gives
every page its empty state. A household's member id in the engine is its household id.
:class:`EngineSettlements` serves results the engine produced (the demo and tests use it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from meterchain.backend.settlement.netting import Bill, BillBuilder, Community, IntervalResult

#: How each bill line is named on the page and in the CSV.
LINE_LABELS = {
    "local_energy_bought": "Local energy bought from neighbours",
    "local_energy_sold": "Local energy sold to neighbours",
    "grid_energy": "Grid energy",
    "feed_in": "Feed-in to the grid",
    "local_network_fee": "Network fee, local energy",
    "grid_network_fee": "Network fee, grid energy",
    "platform_fee": "Platform fee",
    "monthly_fee": "Monthly fee",
    "rounding": "Rounding (per-interval ledger)",
    "vat": "VAT",
}


@dataclass(frozen=True, slots=True)
class Trade:
    """The household's local energy in one settled interval."""

    interval_start: int
    direction: str  # "bought" (from neighbours) or "sold" (to neighbours)
    energy_wh: int
    price: int  # µ€/kWh of the tier that cleared it
    amount: int  # µ€, + paid, − received
    tier: str
    counterparties: tuple[str, ...]  # auction pairs name them; pro-rata pools them (empty)


class Settlements(Protocol):
    async def member_for(self, household: str, start: int, end: int) -> str:
        """The netting member whose lines are the household's in [start, end)."""
        ...

    async def bill(self, member: str, period_start: int, period_end: int) -> Bill | None:
        """The bill of ``member`` for exactly this period, if one was settled."""
        ...

    async def results(self, member: str, start: int, end: int) -> Sequence[IntervalResult]:
        """Settled intervals in [start, end) that include ``member``, oldest first."""
        ...

    async def late(self, member: str, start: int, end: int) -> set[int]:
        """Starts of ``member``'s intervals in [start, end) settled again after a reading came
        in past the deadline (the revision in force is not the first)."""
        ...


class NoSettlements:
    """Nothing settled yet: every page shows its empty state."""

    async def member_for(self, household: str, start: int, end: int) -> str:
        return household

    async def bill(self, member: str, period_start: int, period_end: int) -> Bill | None:
        return None

    async def results(self, member: str, start: int, end: int) -> Sequence[IntervalResult]:
        return ()

    async def late(self, member: str, start: int, end: int) -> set[int]:
        return set()


class EngineSettlements:
    """Results the netting engine produced for one community, kept in memory; bills are built
    from them with the engine's own :class:`BillBuilder`."""

    def __init__(self, community: Community, results: Iterable[IntervalResult] = ()) -> None:
        self.community = community
        self._results: dict[int, IntervalResult] = {}
        for result in results:
            self.add(result)

    async def member_for(self, household: str, start: int, end: int) -> str:
        return household  # these results name households as members

    def add(self, result: IntervalResult) -> None:
        self._results[result.interval_start] = result

    async def results(self, member: str, start: int, end: int) -> Sequence[IntervalResult]:
        return [r for s, r in sorted(self._results.items())
                if start <= s < end and member in r.member_ids]

    async def bill(self, member: str, period_start: int, period_end: int) -> Bill | None:
        inside = await self.results(member, period_start, period_end)
        if not inside:
            return None
        builder = BillBuilder(self.community, period_start, period_end)
        for result in inside:
            builder.add(result)
        return builder.bill(member)

    async def late(self, member: str, start: int, end: int) -> set[int]:
        return set()  # one result per interval: nothing here was settled twice


def trades_of(member: str, results: Iterable[IntervalResult]) -> list[Trade]:
    """The household's local purchases and sales, interval by interval."""
    trades = []
    for result in results:
        k = result.member_ids.index(member)
        energy, money = result.columns.energy, result.columns.money
        for direction, wh_col, money_col, sign, side in (
            ("bought", "bought_local_wh", "local_energy_bought", 1, 0),
            ("sold", "sold_local_wh", "local_energy_sold", -1, 1),
        ):
            wh = int(energy[wh_col][k])
            if not wh:
                continue
            tier = result.tiers[0] if result.tiers else None
            pairs = []
            for t in result.tiers:
                for buyer, seller, _ in t.pairs:
                    if (buyer, seller)[side] == member:
                        pairs.append((buyer, seller)[1 - side])
                        tier = t
            trades.append(Trade(result.interval_start, direction, wh,
                                tier.price if tier else 0, sign * int(money[money_col][k]),
                                tier.name if tier else result.mode, tuple(sorted(set(pairs)))))
    return trades


def community_share(member: str, results: Iterable[IntervalResult]) -> dict[str, int]:
    """Wh from and to neighbours and from and to the grid over the results."""
    share = {"bought_local_wh": 0, "sold_local_wh": 0, "bought_grid_wh": 0, "sold_grid_wh": 0}
    for result in results:
        k = result.member_ids.index(member)
        for name in share:
            share[name] += int(result.columns.energy[name][k])
    return share
