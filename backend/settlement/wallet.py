"""Households' wallets: every change of money is a posting, and a balance is their sum.

Postings are integer µ€ from the holder's side: + a credit (energy sold, a payment received by
the operator), − a debit (energy bought, fees, VAT, a refund paid out). Nothing is ever updated:
a re-settled interval posts its delta lines, a re-issued bill posts the change of its monthly fee
and VAT.

Who holds a member's lines: the household occupying the metering point at the interval's start,
else the point's own account (a vacant flat, the community's own meter). The rounding line of
each money kind (members' rounded lines − the counterparty's amount rounded once, docs/netting.md
"Money lines, fees and rounding") posts to the community's account. So for every settled revision

    Σ postings of households and points = −(members' signed sum), per money kind,
    Σ all postings (with the community's)  = −(counterparty's amount),

exactly as the revision's digest commits to (``MoneyBalance`` in the settlement document), and a
month's postings of one member equal its bill's total (the interval ledger + monthly fee + VAT).

The settlement runner writes settlement postings inside the transaction that stores the revision
(``SettlementTables.commit``) and bill postings inside the one that stores the bills
(``SettlementTables.add_bills``), so a revision never exists without its postings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
from meterchain.backend.access.model import UnknownParty
from meterchain.backend.settlement.netting.model import MONEY_KINDS
from meterchain.backend.settlement.records import BillRow, NewSettlement, bill_from_row
from meterchain.backend.store.tables import SqliteTables
from meterchain.contract.errors import MeterchainError

SIGN = dict(MONEY_KINDS)
#: The energy column each money kind is priced on (the same pairs as a bill's lines).
ENERGY_OF = {
    "local_energy_bought": "bought_local_wh", "local_energy_sold": "sold_local_wh",
    "grid_energy": "bought_grid_wh", "feed_in": "sold_grid_wh",
    "local_network_fee": "bought_local_wh", "grid_network_fee": "bought_grid_wh",
    "platform_fee": "bought_local_wh",
}
_LINE = ("member", "is_delta", "quality", "import_wh", "export_wh", "bought_local_wh",
         "bought_grid_wh", "sold_local_wh", "sold_grid_wh",
         *(kind for kind, _ in MONEY_KINDS))
#: Lines a producer earns by (its earnings page sums them per day and month).
EARNING_LINES = ("local_energy_sold", "feed_in")
MAX_PAYMENT = 10**12  # µ€: one million euros per posting
POSTING_COLUMNS = ("id", "holder_kind", "holder", "community", "member", "source", "line",
                   "interval_start", "revision", "digest", "energy_wh", "amount", "reference",
                   "recorded_by", "time")


class WalletError(MeterchainError):
    """A posting the wallet refuses (an amount out of range, an unknown household)."""

    check = "invalid"


@dataclass(frozen=True, slots=True)
class Posting:
    """One stored posting; ``leaf_index`` is the settlement leaf's place in the log (None until
    sealed, or for payments and bills)."""

    id: int
    holder_kind: str
    holder: str
    community: str
    member: str | None
    source: str  # interval, delta, rounding, bill, payment, refund
    line: str  # a money kind, monthly_fee, vat, payment, refund
    interval_start: int | None  # the interval (settlements) or the bill period's start
    revision: int | None  # settlement revision, or bill version
    digest: bytes | None  # settlement digest, or the bill's basis
    energy_wh: int | None
    amount: int  # µ€, + credit, − debit
    reference: str | None
    recorded_by: str | None
    time: int
    leaf_index: int | None = None


# ------------------------------------------------------------------------ pure construction


Occupancies = Sequence[tuple[str, str, int, int | None]]  # (point, household, from, to)


def holder_at(occupancies: Occupancies, member: str, instant: int) -> tuple[str, str]:
    """(holder kind, holder) of a member's lines at ``instant``."""
    for point, household, valid_from, valid_to in occupancies:
        if point == member and valid_from <= instant and (valid_to is None or instant < valid_to):
            return "household", household
    return "point", member


def holder_for_period(occupancies: Occupancies, member: str, start: int, end: int
                      ) -> tuple[str, str]:
    """The household that held ``member`` longest in [start, end) (a bill's monthly fee and VAT
    are one amount for the period), else the point's own account."""
    held: dict[str, int] = {}
    for point, household, valid_from, valid_to in occupancies:
        if point != member:
            continue
        overlap = min(end, end if valid_to is None else valid_to) - max(start, valid_from)
        if overlap > 0:
            held[household] = held.get(household, 0) + overlap
    if not held:
        return "point", member
    return "household", max(sorted(held), key=held.__getitem__)


def settlement_postings(community: str, item: NewSettlement, occupancies: Occupancies
                        ) -> list[tuple[object, ...]]:
    """Posting rows (POSTING_COLUMNS without id) of one stored revision: each member line's
    non-zero money kinds, and the community's rounding lines."""
    row = item.row
    source = "interval" if row.revision == 0 else "delta"
    out: list[tuple[object, ...]] = []
    for values in item.lines:
        line: dict[str, Any] = dict(zip(_LINE, values, strict=True))  # a stored line's columns
        member = str(line["member"])
        kind, holder = holder_at(occupancies, member, row.interval_start)
        for money, sign in MONEY_KINDS:
            amount = int(line[money])
            if amount:
                out.append((kind, holder, community, member, source, money, row.interval_start,
                            row.revision, row.digest, int(line[ENERGY_OF[money]]),
                            -sign * amount, None, "settlement", row.settled_at))
    for money, rounding in item.rounding:
        if rounding:
            out.append(("community", community, community, None, "rounding", money,
                        row.interval_start, row.revision, row.digest, None, rounding, None,
                        "settlement", row.settled_at))
    return out


def bill_postings(bill: BillRow, previous: BillRow | None, occupancies: Occupancies
                  ) -> list[tuple[object, ...]]:
    """The monthly fee and VAT of an issued bill; a later version posts only what changed."""

    def amounts(b: BillRow | None) -> dict[str, int]:
        found = {"monthly_fee": 0, "vat": 0}
        for line in b.lines if b is not None else ():
            if line["kind"] in found:
                found[str(line["kind"])] = int(line["amount"])  # type: ignore[call-overload]
        return found

    new, old = amounts(bill), amounts(previous)
    kind, holder = holder_for_period(occupancies, bill.member, bill.period_start, bill.period_end)
    return [(kind, holder, bill.community, bill.member, "bill", line, bill.period_start,
             bill.version, bill.basis, None, -(new[line] - old[line]), None, "bill", bill.issued)
            for line in ("monthly_fee", "vat") if new[line] != old[line]]


# ------------------------------------------------------------------ writes inside a transaction


_INSERT = (f"INSERT INTO wallet_postings ({', '.join(POSTING_COLUMNS[1:])}) "
           f"VALUES ({', '.join('?' for _ in POSTING_COLUMNS[1:])})")


async def community_occupancies(db: aiosqlite.Connection, community: str) -> Occupancies:
    async with db.execute(
            "SELECT o.metering_point, o.household, o.valid_from, o.valid_to FROM occupancies o "
            "JOIN metering_points m ON m.id = o.metering_point WHERE m.community = ? "
            "ORDER BY o.valid_from", (community,)) as cur:
        return [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]


async def post_settlements(db: aiosqlite.Connection, community: str,
                           settled: Sequence[NewSettlement]) -> int:
    """Post the revisions' lines; called by ``SettlementTables.commit`` in its transaction."""
    if not settled:
        return 0
    occupancies = await community_occupancies(db, community)
    rows = [p for item in settled for p in settlement_postings(community, item, occupancies)]
    await db.executemany(_INSERT, rows)
    return len(rows)


async def post_bills(db: aiosqlite.Connection, bills: Sequence[BillRow]) -> int:
    """Post the bills' monthly fee and VAT (the change from the previous version); called by
    ``SettlementTables.add_bills`` in its transaction, before the bills are inserted."""
    rows: list[tuple[object, ...]] = []
    occupancies: dict[str, Occupancies] = {}
    for bill in bills:
        if bill.community not in occupancies:
            occupancies[bill.community] = await community_occupancies(db, bill.community)
        async with db.execute(
                "SELECT community, member, period_start, version, period_end, issued, basis, "
                "total, baseline_total, savings, co2_avoided_g, energy, lines FROM netting_bills "
                "WHERE community = ? AND member = ? AND period_start = ? AND version < ? "
                "ORDER BY version DESC LIMIT 1",
                (bill.community, bill.member, bill.period_start, bill.version)) as cur:
            found = await cur.fetchone()
        previous = bill_from_row(found) if found is not None else None
        rows += bill_postings(bill, previous, occupancies[bill.community])
    await db.executemany(_INSERT, rows)
    return len(rows)


# ---------------------------------------------------------------------------------- queries


class WalletTables(SqliteTables):
    """Balances, postings and payments over one store's connection."""

    async def balance(self, holder_kind: str, holder: str) -> int:
        row = await self._one("SELECT coalesce(sum(amount), 0) FROM wallet_postings "
                              "WHERE holder_kind = ? AND holder = ?", (holder_kind, holder))
        return int(row[0]) if row else 0

    async def balance_before(self, holder_kind: str, holder: str, start: int) -> int:
        """The balance of the postings of intervals (payments: made) before ``start``."""
        row = await self._one("SELECT coalesce(sum(amount), 0) FROM wallet_postings "
                              "WHERE holder_kind = ? AND holder = ? "
                              "AND coalesce(interval_start, time) < ?", (holder_kind, holder, start))
        return int(row[0]) if row else 0

    async def postings(self, holder_kind: str, holder: str, start: int = 0,
                       end: int = 2**62, limit: int = 1_000_000, newest: bool = False
                       ) -> list[Posting]:
        """Settlement and bill postings with interval_start in [start, end) and payments made in
        it, oldest first, each with its settlement leaf's log index; ``newest``: the last
        ``limit`` of them (still oldest first)."""
        order = "DESC" if newest else ""
        rows = await self._rows(
            f"SELECT {', '.join('p.' + c for c in POSTING_COLUMNS)}, l.leaf_index "
            "FROM wallet_postings p LEFT JOIN settlements s ON s.digest = p.digest "
            "LEFT JOIN leaves l ON l.id = s.leaf_id WHERE p.holder_kind = ? AND p.holder = ? "
            "AND coalesce(p.interval_start, p.time) >= ? AND coalesce(p.interval_start, p.time) < ? "
            f"ORDER BY coalesce(p.interval_start, p.time) {order}, p.id {order} LIMIT ?",
            (holder_kind, holder, start, end, limit))
        found = [Posting(*r) for r in rows]
        return found[::-1] if newest else found

    async def sums_by_line(self, holder_kind: str, holder: str, start: int, end: int
                           ) -> dict[str, int]:
        rows = await self._rows(
            "SELECT line, sum(amount) FROM wallet_postings WHERE holder_kind = ? AND holder = ? "
            "AND coalesce(interval_start, time) >= ? AND coalesce(interval_start, time) < ? "
            "GROUP BY line", (holder_kind, holder, start, end))
        return {str(r[0]): int(r[1]) for r in rows}

    async def earnings(self, household: str, start: int, end: int) -> list[tuple[int, str, int, int]]:
        """(interval start, line, Wh, µ€) of the household's sold-energy postings in [start, end)."""
        marks = ", ".join("?" for _ in EARNING_LINES)
        rows = await self._rows(
            "SELECT interval_start, line, sum(coalesce(energy_wh, 0)), sum(amount) "
            "FROM wallet_postings WHERE holder_kind = 'household' AND holder = ? "
            f"AND line IN ({marks}) AND interval_start >= ? AND interval_start < ? "
            "GROUP BY interval_start, line ORDER BY interval_start",
            (household, *EARNING_LINES, start, end))
        return [(int(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def billed_periods(self, household: str) -> set[int]:
        """Bill period starts already posted for the household (monthly fee and VAT)."""
        return {int(r[0]) for r in await self._rows(
            "SELECT DISTINCT interval_start FROM wallet_postings WHERE holder_kind = 'household' "
            "AND holder = ? AND source = 'bill'", (household,))}

    async def record_payment(self, household: str, kind: str, amount: int, reference: str | None,
                             recorded_by: str, now: int) -> Posting:
        """A payment the household made (a credit) or a refund paid out to it (a debit)."""
        if kind not in ("payment", "refund"):
            raise WalletError("kind must be payment or refund", kind=kind)
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_PAYMENT:
            raise WalletError(f"amount must be an integer in µ€, 1 … {MAX_PAYMENT}",
                              amount=amount, hint="10 € is 10000000")
        if reference is not None and len(reference) > 200:
            raise WalletError("reference is longer than 200 characters")

        async def work() -> Posting:
            found = await self._one("SELECT community FROM households WHERE id = ?", (household,))
            if found is None:
                raise UnknownParty(f"no household {household}", id=household)
            signed = amount if kind == "payment" else -amount
            values = ("household", household, str(found[0]), None, kind, kind, None, None, None,
                      None, signed, reference, recorded_by, now)
            cur = await self._db.execute(_INSERT, values)
            return Posting(int(cur.lastrowid or 0), *values)

        return await self._transaction(work)

    async def totals_by_interval(self, community: str, start: int, end: int
                                 ) -> dict[tuple[int, int, str], int]:
        """Σ amounts per (interval, revision, line) over every holder (checks and audits)."""
        rows = await self._rows(
            "SELECT interval_start, revision, line, sum(amount) FROM wallet_postings "
            "WHERE community = ? AND source IN ('interval', 'delta', 'rounding') "
            "AND interval_start >= ? AND interval_start < ? GROUP BY interval_start, revision, line",
            (community, start, end))
        return {(int(r[0]), int(r[1]), str(r[2])): int(r[3]) for r in rows}


def posting_json(p: Posting) -> dict[str, object]:
    """A posting as the API and the CSV statement give it."""
    return {"id": p.id, "source": p.source, "line": p.line, "member": p.member,
            "interval_start": p.interval_start, "revision": p.revision,
            "digest": p.digest.hex() if p.digest else None, "leaf_index": p.leaf_index,
            "energy_wh": p.energy_wh, "amount": p.amount, "reference": p.reference,
            "time": p.time}
