"""A scoped-access scenario on disk: two utilities, a shared gateway, a meter exchange mid-day,
a household that moves out, auditor grants, and one API key per principal.

gw-a reads two meters: household A's (``mp-a``: meter M-A1, exchanged for M-A2 at ``EXCHANGE``,
mid-interval) and the flat next door (``mp-n``: meter M-N, held by ``h-old`` until ``MOVE``, then
by ``h-new``). gw-b reads ``mp-b`` of another utility. One stray M-A1 reading arrives after the
exchange: it belongs to no metering point, so only the admin sees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.routing import APIRoute
from meterchain.backend.access.model import KeyKind, PointKind
from meterchain.backend.access.tables import PartyTables

from tests.support.backend import T0, Gateway, backend, close

EXCHANGE = T0 + 900 * 4 + 300  # the meter exchange, mid-interval: M-A1 ends at 4, M-A2 from 5
MOVE = T0 + 900 * 4  # h-old's occupancy of mp-n ends here (exclusive); h-new's starts here
ADMIN_TOKEN = "root-token-for-tests"
STRAY_SEQ = 17  # M-A1 read after it was exchanged: bound to nothing


@dataclass
class Scenario:
    db: Path
    log_key: object  # NoteSigner
    gw_a: Gateway
    gw_b: Gateway
    tokens: dict[str, str] = field(default_factory=dict)  # principal name -> bearer token
    key_ids: dict[str, str] = field(default_factory=dict)
    seqs: dict[str, list[int]] = field(default_factory=dict)  # metering point -> gw seqs

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def build(tmp_path: Path) -> Scenario:
    from meterchain.backend.service import load_or_create_log_key

    gw_a, gw_b = Gateway("gw-a"), Gateway("gw-b")
    log_key = load_or_create_log_key(tmp_path / "log.key", "access.test/log")
    admin, ingest, sealer, store = await backend(tmp_path, gw_a, gw_b, log_key=log_key)
    scenario = Scenario(tmp_path / "mc.db", log_key, gw_a, gw_b)
    parties = PartyTables(admin)
    now = int(time.time())
    await parties.add_utility("u1", "Stadtwerk Eins", now)
    await parties.add_utility("u2", "Stadtwerk Zwei", now)
    await parties.add_community("c1", "u1", "Sunny Street", now)
    await parties.add_community("c2", "u2", "Windy Hill", now)
    for household, community in (("h-a", "c1"), ("h-old", "c1"), ("h-new", "c1"), ("h-b", "c2")):
        await parties.add_household(household, community, household, now)
    await parties.add_metering_point("mp-a", "u1", "c1", PointKind.CONSUMPTION, now)
    await parties.add_metering_point("mp-n", "u1", "c1", PointKind.CONSUMPTION, now)
    await parties.add_metering_point("mp-b", "u2", "c2", PointKind.GENERATION, now)
    await parties.bind_meter("mp-a", "gw-a", "M-A1", 0, EXCHANGE, now)
    await parties.bind_meter("mp-a", "gw-a", "M-A2", EXCHANGE, None, now)
    await parties.bind_meter("mp-n", "gw-a", "M-N", 0, None, now)
    await parties.bind_meter("mp-b", "gw-b", "M-B", 0, None, now)
    await parties.add_occupancy("mp-a", "h-a", 0, None, now)
    await parties.add_occupancy("mp-n", "h-old", 0, MOVE, now)
    await parties.add_occupancy("mp-n", "h-new", MOVE, None, now)
    await parties.add_occupancy("mp-b", "h-b", 0, None, now)
    await parties.add_grant("g-c1", "community audit", now + 3600, [], ["c1"], now)
    await parties.add_grant("g-b", "one point", now + 3600, ["mp-b"], [], now)
    await parties.add_grant("g-old", "will expire", now + 3600, ["mp-a"], [], now)
    for name, kind, subject in (
        ("admin-key", KeyKind.ADMIN, None), ("u1", KeyKind.UTILITY, "u1"),
        ("u2", KeyKind.UTILITY, "u2"), ("h-a", KeyKind.HOUSEHOLD, "h-a"),
        ("h-a-revoked", KeyKind.HOUSEHOLD, "h-a"), ("h-old", KeyKind.HOUSEHOLD, "h-old"),
        ("h-new", KeyKind.HOUSEHOLD, "h-new"), ("h-b", KeyKind.HOUSEHOLD, "h-b"),
        ("aud-c1", KeyKind.AUDITOR, "g-c1"), ("aud-b", KeyKind.AUDITOR, "g-b"),
        ("aud-expired", KeyKind.AUDITOR, "g-old"),
    ):
        key, token = await parties.create_key(kind, subject, name, None, now)
        scenario.tokens[name], scenario.key_ids[name] = token, key.id
    await parties.revoke_key(scenario.key_ids["h-a-revoked"], now)
    # Time passes for the grant g-old: it has expired by the time anyone uses it.
    await admin.execute("UPDATE grants SET expires = ? WHERE id = 'g-old'", (now - 1,))
    scenario.tokens["root"] = ADMIN_TOKEN

    messages, seq = [], 0
    scenario.seqs = {"mp-a": [], "mp-n": [], "mp-b": [], "stray": []}
    for k in range(1, 9):
        end = T0 + 900 * k
        seq += 1
        messages.append(gw_a.message(seq, meter="M-A1" if end < EXCHANGE else "M-A2", end=end))
        scenario.seqs["mp-a"].append(seq)
        seq += 1
        messages.append(gw_a.message(seq, meter="M-N", end=end))
        scenario.seqs["mp-n"].append(seq)
    assert seq + 1 == STRAY_SEQ
    messages.append(gw_a.message(STRAY_SEQ, meter="M-A1", end=T0 + 900 * 6))
    scenario.seqs["stray"].append(STRAY_SEQ)
    for k in range(1, 4):
        messages.append(gw_b.message(k, meter="M-B", end=T0 + 900 * k))
        scenario.seqs["mp-b"].append(k)
    await ingest.process(messages)
    await sealer.seal_all()
    await close(admin, ingest, sealer, store)
    return scenario


def all_routes(routes: list[object]) -> Iterator[APIRoute]:
    """Every APIRoute of the app, also inside included routers."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from all_routes(inner.routes)
        elif isinstance(route, APIRoute):
            yield route
