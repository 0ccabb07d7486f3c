"""The pages' view of what the settlement runner stored (backend/settlement/runner.py).

In the netting engine a member is a metering point; a household's bill and trades are those of
the metering point it held in the period. Results are rebuilt from each stored revision's own
input (``settlement.rebuild`` checks the digest), and bills are built exactly as the runner
issues them (``settlement.bills_from``), so the page shows what the log commits to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meterchain.backend.access.tables import PartyTables
from meterchain.backend.settlement.netting import Bill, IntervalResult
from meterchain.backend.settlement.runner import bills_from, rebuild, terms_at
from meterchain.backend.settlement.tables import SettlementTables
from meterchain.backend.store import SqliteStore


class StoredSettlements:
    """:class:`~meterchain.backend.web.settlements.Settlements` over the store."""

    def __init__(self, store_of: Callable[[], SqliteStore]) -> None:
        self._store_of = store_of  # the API opens its store in its lifespan, after mounting

    @property
    def tables(self) -> SettlementTables:
        return SettlementTables(self._store_of())

    @property
    def parties(self) -> PartyTables:
        return PartyTables(self._store_of())

    async def member_for(self, household: str, start: int, end: int) -> str:
        """The metering point the household held longest in [start, end) within a netting
        community; the household id itself when it held none (the pages then show nothing)."""
        netting = set()
        for community in await self.tables.netting_communities():
            netting.update(await self.tables.points(community))
        held: dict[str, int] = {}
        for occ in await self.parties.occupancies():
            if occ.household != household or occ.metering_point not in netting:
                continue
            overlap = min(end, occ.valid_to if occ.valid_to is not None else end) - max(start, occ.valid_from)
            if overlap > 0:
                held[occ.metering_point] = held.get(occ.metering_point, 0) + overlap
        return max(sorted(held), key=held.__getitem__) if held else household

    async def _community(self, member: str) -> str | None:
        for community in await self.tables.netting_communities():
            if member in await self.tables.points(community):
                return community
        return None

    async def results(self, member: str, start: int, end: int) -> Sequence[IntervalResult]:
        community = await self._community(member)
        if community is None:
            return ()
        rows = await self.tables.in_force(community, start, end)
        results = [rebuild(rows[s])[1] for s in sorted(rows)]
        return [r for r in results if member in r.member_ids]

    async def late(self, member: str, start: int, end: int) -> set[int]:
        community = await self._community(member)
        if community is None:
            return set()
        rows = await self.tables.in_force(community, start, end)
        return {s for s, row in rows.items() if row.revision > 0}

    async def bill(self, member: str, period_start: int, period_end: int) -> Bill | None:
        community = await self._community(member)
        if community is None:
            return None
        versions = await self.tables.terms(community)
        rows = await self.tables.revisions(community, period_start, period_end)
        if not versions or not rows:
            return None
        terms = terms_at(versions, period_start) or versions[0]
        bills, _ = bills_from(rows, terms, period_start, period_end)
        return bills.get(member)
