"""Monthly bills: itemised lines from the settled intervals (and their delta lines).

Each energy and fee line is the month's exact n€ total rounded half-even once; the interval ledger
rounded every interval, so an explicit rounding line makes the bill total equal the ledger to the
micro-euro. VAT is charged on the charges (energy bought, fees, monthly fee) and not on credits
(energy sold: small producers are commonly exempt; a community that differs needs its own rule).
Savings compare with the baseline without the community: every import at p_g plus the grid network
fee, every export at p_f, VAT alike. CO₂ avoided: local kWh × the community's grid factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .deltas import IntervalDelta
from .errors import InputError, ResettlementError
from .model import MAX_BILL_INTERVALS, MONEY_KINDS, Community, IntervalResult
from .rounding import div_half_even

ENERGY_TOTALS = ("import_wh", "export_wh", "bought_local_wh", "bought_grid_wh", "sold_local_wh",
                 "sold_grid_wh")
CHARGE_KINDS = tuple(kind for kind, sign in MONEY_KINDS if sign > 0)


@dataclass(frozen=True)
class BillLine:
    kind: str  # a money kind, "monthly_fee", "rounding" or "vat"
    amount: int  # µ€, + the member pays, − the member receives
    energy_wh: int | None = None


@dataclass(frozen=True)
class Bill:
    member_id: str
    period_start: int
    period_end: int
    energy: dict[str, int]
    lines: tuple[BillLine, ...]
    total: int  # Σ lines, µ€
    baseline_total: int  # what the same metering would have cost without the community
    savings: int  # baseline_total − total
    co2_avoided_g: int


_ENERGY_OF = {
    "local_energy_bought": "bought_local_wh", "local_energy_sold": "sold_local_wh",
    "grid_energy": "bought_grid_wh", "feed_in": "sold_grid_wh",
    "local_network_fee": "bought_local_wh", "grid_network_fee": "bought_grid_wh",
    "platform_fee": "bought_local_wh",
}


class BillBuilder:
    """Accumulates settled intervals of one period; one per community and period.

    An interval enters once as a result; corrections enter only as the delta lines that continue
    the digest in force, so a bill can never silently mix two revisions of one interval.
    """

    def __init__(self, community: Community, period_start: int, period_end: int) -> None:
        if period_end <= period_start:
            raise InputError("empty bill period", start=period_start, end=period_end)
        self.community = community
        self.period_start = period_start
        self.period_end = period_end
        self._in_force: dict[int, bytes] = {}
        self._index: dict[str, int] = {}
        self._ids_cache: tuple[tuple[str, ...], np.ndarray] | None = None
        self._size = 0
        self._sums = np.zeros((self._PRESENT + 1, 1024), np.int64)

    # rows of self._sums
    _E: ClassVar[dict[str, int]] = {name: i for i, name in enumerate(ENERGY_TOTALS)}
    _X: ClassVar[dict[str, int]] = {kind: len(ENERGY_TOTALS) + i for i, (kind, _) in enumerate(MONEY_KINDS)}
    _M: ClassVar[dict[str, int]] = {
        kind: len(ENERGY_TOTALS) + len(MONEY_KINDS) + i for i, (kind, _) in enumerate(MONEY_KINDS)
    }
    _BASE_COST = len(ENERGY_TOTALS) + 2 * len(MONEY_KINDS)
    _BASE_FEED = _BASE_COST + 1
    _CO2 = _BASE_COST + 2
    _PRESENT = _BASE_COST + 3

    def _rows_for(self, member_ids: tuple[str, ...]) -> np.ndarray:
        cached = self._ids_cache
        if cached is not None and (cached[0] is member_ids or cached[0] == member_ids):
            return cached[1]
        rows = np.empty(len(member_ids), np.int64)
        for k, member in enumerate(member_ids):
            row = self._index.get(member)
            if row is None:
                row = self._index[member] = self._size
                self._size += 1
            rows[k] = row
        if self._size > self._sums.shape[1]:
            grown = np.zeros((self._sums.shape[0], max(self._size, 2 * self._sums.shape[1])),
                             np.int64)
            grown[:, : self._sums.shape[1]] = self._sums
            self._sums = grown
        self._ids_cache = (member_ids, rows)
        return rows

    def _check_period(self, community_id: str, interval_start: int) -> None:
        if community_id != self.community.community_id:
            raise InputError("interval of another community", community_id=community_id)
        if not self.period_start <= interval_start < self.period_end:
            raise InputError("interval outside the bill period", interval_start=interval_start,
                             period=(self.period_start, self.period_end))

    def add(self, result: IntervalResult) -> None:
        self._check_period(result.community_id, result.interval_start)
        if result.interval_start in self._in_force:
            raise ResettlementError("interval already billed: add its delta lines instead",
                                    interval_start=result.interval_start)
        if len(self._in_force) >= MAX_BILL_INTERVALS:
            raise InputError("too many intervals for one bill", limit=MAX_BILL_INTERVALS)
        self._in_force[result.interval_start] = result.digest
        energy, exact, money = result.columns.energy, result.columns.exact, result.columns.money
        self._accumulate(result.member_ids, energy, exact, money, result.retail_price,
                         result.feed_in_price, result.fees.grid_network_per_kwh,
                         result.co2_grams_per_kwh, present=True)

    def add_delta(self, delta: IntervalDelta) -> None:
        self._check_period(delta.community_id, delta.interval_start)
        if self._in_force.get(delta.interval_start) != delta.from_digest:
            raise ResettlementError("delta does not continue the revision in force",
                                    interval_start=delta.interval_start)
        self._in_force[delta.interval_start] = delta.to_digest
        self._accumulate(delta.member_ids, delta.energy, delta.exact, delta.money,
                         delta.retail_price, delta.feed_in_price, delta.grid_network_fee,
                         delta.co2_grams_per_kwh, present=False)

    def _accumulate(self, member_ids: tuple[str, ...], energy: dict[str, np.ndarray],
                    exact: dict[str, np.ndarray], money: dict[str, np.ndarray], retail: int,
                    feed_in: int, grid_fee: int, co2: int, *, present: bool) -> None:
        rows = self._rows_for(member_ids)
        sums = self._sums
        for name, r in self._E.items():
            sums[r, rows] += energy[name]
        for kind, _ in MONEY_KINDS:
            sums[self._X[kind], rows] += exact[kind]
            sums[self._M[kind], rows] += money[kind]
        sums[self._BASE_COST, rows] += energy["import_wh"] * np.int64(retail + grid_fee)
        sums[self._BASE_FEED, rows] += energy["export_wh"] * np.int64(feed_in)
        sums[self._CO2, rows] += energy["bought_local_wh"] * np.int64(co2)
        if present:
            sums[self._PRESENT, rows] += 1

    def bills(self) -> dict[str, Bill]:
        """One bill per member seen in the period, keyed and ordered by member id."""
        return {m: self.bill(m) for m in sorted(self._index)}

    def bill(self, member_id: str) -> Bill:
        col = [int(v) for v in self._sums[:, self._index[member_id]]]
        fees = self.community.fees
        energy = {name: col[r] for name, r in self._E.items()}
        lines = []
        ledger = 0
        charges = 0
        for kind, sign in MONEY_KINDS:
            lines.append(BillLine(kind, sign * div_half_even(col[self._X[kind]], 1000),
                                  energy[_ENERGY_OF[kind]]))
            ledger += sign * col[self._M[kind]]
            if sign > 0:
                charges += col[self._M[kind]]
        monthly = fees.monthly_fee if col[self._PRESENT] else 0
        lines.append(BillLine("monthly_fee", monthly))
        lines.append(BillLine("rounding", ledger - sum(line.amount for line in lines[:-1])))
        vat = div_half_even((charges + monthly) * fees.vat_basis_points, 10_000)
        lines.append(BillLine("vat", vat))
        total = ledger + monthly + vat
        base_cost = div_half_even(col[self._BASE_COST], 1000)
        baseline = base_cost + div_half_even(base_cost * fees.vat_basis_points, 10_000) \
            - div_half_even(col[self._BASE_FEED], 1000)
        return Bill(member_id, self.period_start, self.period_end, energy, tuple(lines), total,
                    baseline, baseline - total, div_half_even(col[self._CO2], 1000))
