"""Re-settlement: a late or corrected reading settles the interval again as a new revision that
names the digest it supersedes; what changed is booked as delta lines (new − old per member and
line), so the ledger only ever appends and old + Σ deltas = the revision in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import ResettlementError
from .model import ENERGY_COLUMNS, MONEY_KINDS, Community, IntervalInput, IntervalResult, Listing
from .settle import settle_interval


@dataclass(frozen=True, eq=False)
class IntervalDelta:
    """Delta lines of one re-settlement: only members with a non-zero change appear."""

    community_id: str
    interval_start: int
    from_digest: bytes
    to_digest: bytes
    to_revision: int
    retail_price: int
    feed_in_price: int
    grid_network_fee: int
    co2_grams_per_kwh: int
    member_ids: tuple[str, ...]
    energy: dict[str, np.ndarray]
    money: dict[str, np.ndarray]
    exact: dict[str, np.ndarray]

    def member_row(self, member_id: str) -> dict[str, int]:
        i = self.member_ids.index(member_id)
        row = {k: int(v[i]) for k, v in self.energy.items()}
        row.update({k: int(v[i]) for k, v in self.money.items()})
        return row


def resettle(
    previous: IntervalResult,
    community: Community,
    interval: IntervalInput,
    listings: Mapping[str, Listing] | None = None,
) -> tuple[IntervalResult, IntervalDelta]:
    """Settle `interval` again as the next revision of `previous` and return the delta lines."""
    if (previous.community_id, previous.interval_start) != (community.community_id,
                                                            interval.interval_start):
        raise ResettlementError("re-settlement of a different interval",
                                previous=(previous.community_id, previous.interval_start),
                                new=(community.community_id, interval.interval_start))
    result = settle_interval(community, interval, listings, revision=previous.revision + 1,
                             supersedes=previous.digest)
    return result, delta_lines(previous, result)


def delta_lines(old: IntervalResult, new: IntervalResult) -> IntervalDelta:
    """new − old for every member and line; a member missing on one side counts as zeros."""
    if new.supersedes != old.digest:
        raise ResettlementError("the new result does not supersede the old one",
                                old=old.digest.hex(), supersedes=(new.supersedes or b"").hex())
    members = tuple(sorted(set(old.member_ids) | set(new.member_ids)))
    old_pos = _positions(members, old.member_ids)
    new_pos = _positions(members, new.member_ids)

    def diff(old_col: np.ndarray, new_col: np.ndarray) -> np.ndarray:
        out = np.zeros(len(members), np.int64)
        out[new_pos] += new_col
        out[old_pos] -= old_col
        return out

    energy = {k: diff(old.columns.energy[k], new.columns.energy[k])
              for k in ENERGY_COLUMNS if k != "quality"}
    money = {k: diff(old.columns.money[k], new.columns.money[k]) for k, _ in MONEY_KINDS}
    exact = {k: diff(old.columns.exact[k], new.columns.exact[k]) for k, _ in MONEY_KINDS}
    changed = np.zeros(len(members), bool)
    for column in (*energy.values(), *money.values(), *exact.values()):
        changed |= column != 0
    keep = np.flatnonzero(changed)
    return IntervalDelta(
        new.community_id, new.interval_start, old.digest, new.digest, new.revision,
        new.retail_price, new.feed_in_price, new.fees.grid_network_per_kwh,
        new.co2_grams_per_kwh,
        tuple(members[i] for i in keep),
        {k: v[keep] for k, v in energy.items()},
        {k: v[keep] for k, v in money.items()},
        {k: v[keep] for k, v in exact.items()},
    )


def _positions(universe: tuple[str, ...], subset: tuple[str, ...]) -> np.ndarray:
    where = {m: i for i, m in enumerate(universe)}
    return np.fromiter((where[m] for m in subset), np.int64, len(subset))
