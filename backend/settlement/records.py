"""The settlement tables' records that the wallet's postings read too (settled revisions and
bills): a module of their own, so ``tables.py`` and ``wallet.py`` import them one way."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SettlementRow:
    """One settled revision of one interval, with its per-community aggregates."""

    community: str
    interval_start: int
    revision: int
    interval_seconds: int
    digest: bytes
    supersedes: bytes | None
    leaf_id: int
    reason: str
    settled_at: int
    input: bytes
    mode: str
    rule: str
    retail_price: int
    feed_in_price: int
    members: int
    missing: int
    substituted: int
    demand_wh: int
    supply_wh: int
    local_wh: int
    grid_import_wh: int
    grid_export_wh: int
    self_sufficiency_ppm: int | None
    self_consumption_ppm: int | None
    co2_avoided_g: int
    tiers: str
    leaf_index: int | None = None


@dataclass(frozen=True, slots=True)
class NewSettlement:
    """What the runner writes for one settled revision (built in backend/settlement/runner.py)."""

    row: SettlementRow
    leaf_data: bytes
    lines: Sequence[tuple[object, ...]]  # LINE_COLUMNS values
    origin: Sequence[tuple[str, int]]  # (seller, export Wh)
    rounding: Sequence[tuple[str, int]] = ()  # (money kind, the community's rounding line)


@dataclass(frozen=True, slots=True)
class BillRow:
    community: str
    member: str
    period_start: int
    version: int
    period_end: int
    issued: int
    basis: bytes
    total: int
    baseline_total: int
    savings: int
    co2_avoided_g: int
    energy: dict[str, int]
    lines: list[dict[str, object]]


def bill_from_row(row: Sequence[Any]) -> BillRow:
    """A :class:`BillRow` from the ``bills`` columns in table order (energy and lines as JSON)."""
    fields = [*row[:11], json.loads(row[11]), json.loads(row[12])]  # one list: mypy cannot count a slice
    return BillRow(*fields)
