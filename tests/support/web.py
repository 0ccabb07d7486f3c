"""A household dashboard scenario on disk: two households of one community, their metering points
(alice: a house meter exchanged at 10:00 and a PV inverter that falls silent at 12:00; bob: a
house meter), signed readings through the real ingest, sealed into the log, settled with the
netting engine, and one login each (set through the real invitation link)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from meterchain.backend.access.model import PointKind
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.service import load_or_create_log_key
from meterchain.backend.settlement.netting import (
    Community,
    Fees,
    IntervalInput,
    MemberInterval,
    PriceSchedule,
    settle_interval,
)
from meterchain.backend.store import open_store
from meterchain.backend.web import accounts, series
from meterchain.backend.web.settlements import EngineSettlements
from meterchain.backend.web.tables import WebTables
from meterchain.contract.message import sign_reading
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register
from meterchain.contract.signing import key_id

from tests.support.backend import Gateway, backend, close

ZONE = "Europe/Berlin"
DAY = dt.date(2024, 3, 31)  # the spring DST day in Berlin: 92 quarter hours
NOW = int(dt.datetime(2024, 3, 31, 14, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
FIRST = int(dt.datetime(2024, 3, 30, 0, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
EXCHANGE = int(dt.datetime(2024, 3, 31, 10, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
PV_SILENT = int(dt.datetime(2024, 3, 31, 12, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}
COMMUNITY = Community(
    "sunny-street", PriceSchedule.fixed(300_000), PriceSchedule.fixed(80_000),
    Fees(local_network_per_kwh=20_000, grid_network_per_kwh=60_000, platform_per_kwh=5_000,
         monthly_fee=4_990_000, vat_basis_points=1900),
    co2_grams_per_kwh=380)


@dataclass
class Scenario:
    db: Path
    log_key: object  # NoteSigner
    settlements: EngineSettlements
    readings: dict[str, int]  # device -> count


def _house(k: int) -> int:
    """Wh imported in quarter hour k: a daily shape, never negative."""
    return 60 + (k * 37) % 140


def _pv(k: int, start: int) -> int:
    hour = dt.datetime.fromtimestamp(start, ZoneInfo(ZONE)).hour
    return max(0, 6 - abs(hour - 13)) * (40 + (k * 13) % 30)


async def build(tmp_path: Path) -> Scenario:
    gateways = {name: Gateway(name) for name in ("gw-alice", "gw-bob")}
    log_key = load_or_create_log_key(tmp_path / "log.key", "households.test/log")
    admin, ingest, sealer, store = await backend(tmp_path, *gateways.values(), log_key=log_key)
    parties = PartyTables(admin)
    await parties.add_utility("u1", "Stadtwerk", 0)
    await parties.add_community("sunny-street", "u1", "Sunny Street", 0)
    await parties.add_household("h-alice", "sunny-street", "Alice's house", 0)
    await parties.add_household("h-bob", "sunny-street", "Bob's flat", 0)
    for point, kind in (("mp-alice-house", PointKind.CONSUMPTION),
                        ("mp-alice-pv", PointKind.GENERATION), ("mp-bob-house", PointKind.CONSUMPTION)):
        await parties.add_metering_point(point, "u1", "sunny-street", kind, 0)
    await parties.bind_meter("mp-alice-house", "gw-alice", "SDM-H1", 0, EXCHANGE, 0)
    await parties.bind_meter("mp-alice-house", "gw-alice", "SDM-H2", EXCHANGE, None, 0)
    await parties.bind_meter("mp-alice-pv", "gw-alice", "SDM-PV", 0, None, 0)
    await parties.bind_meter("mp-bob-house", "gw-bob", "SDM-B", 0, None, 0)
    await parties.add_occupancy("mp-alice-house", "h-alice", 0, None, 0)
    await parties.add_occupancy("mp-alice-pv", "h-alice", 0, None, 0)
    await parties.add_occupancy("mp-bob-house", "h-bob", 0, None, 0)

    registers: dict[tuple[str, str], list[int]] = {}
    seqs = {"gw-alice": 0, "gw-bob": 0}
    messages = []

    def reading(device: str, meter: str, end: int, imp: int, exp: int) -> None:
        regs = registers.setdefault((device, meter), [10_000, 500])
        regs[0] += imp
        regs[1] += exp
        seqs[device] += 1
        gw = gateways[device]
        signed = sign_reading(Reading(
            device=device, key_id=key_id(gw.public_key), seq=seqs[device], meter=meter,
            start=end - 900, end=end, registers={IMPORT_OBIS: Register(regs[0], "Wh"),
                                                 EXPORT_OBIS: Register(regs[1], "Wh")}), gw.signer)
        messages.append((gw.topic, signed.to_cbor()))

    for k, end in enumerate(range(FIRST, NOW + 1, 900)):
        house = "SDM-H1" if end <= EXCHANGE else "SDM-H2"
        pv = _pv(k, end - 900)
        reading("gw-alice", house, end, max(0, _house(k) - pv), max(0, pv - _house(k)))
        if end <= PV_SILENT:
            reading("gw-alice", "SDM-PV", end, 2, pv)
        reading("gw-bob", "SDM-B", end, _house(k + 11), 0)
    for i in range(0, len(messages), 500):
        await ingest.process(messages[i:i + 500])
    await sealer.seal_all()

    # Settle every interval where both households' house meters have energy, with the engine.
    settlements = EngineSettlements(COMMUNITY)
    energy = {}
    for household, point in (("h-alice", "mp-alice-house"), ("h-bob", "mp-bob-house")):
        rows = await parties.readings(_principal(household), point=point, limit=10_000)
        energy[household] = {i.start: i for i in series.interval_energy(r for r, _ in rows)}
    for start in sorted(set(energy["h-alice"]) & set(energy["h-bob"])):
        members = [MemberInterval(h, energy[h][start].import_wh, energy[h][start].export_wh)
                   for h in ("h-alice", "h-bob")]
        settlements.add(settle_interval(COMMUNITY, IntervalInput.from_members(start, members)))

    web = WebTables(admin)
    for household, user in (("h-alice", "alice"), ("h-bob", "bob")):
        await web.set_timezone(household, ZONE)
        token, _ = await web.create_link("invite", household, None, int(time.time()))
        await web.accept_invite(token, user, accounts.hash_password(PASSWORDS[user]), int(time.time()))
    await close(admin, ingest, sealer, store)
    return Scenario(tmp_path / "mc.db", log_key, settlements, dict(seqs))


def _principal(household: str):  # type: ignore[no-untyped-def]
    from meterchain.backend.access.model import KeyKind, Principal, Scope

    return Principal(KeyKind.HOUSEHOLD, household, frozenset({Scope.READ}))


async def reopen(db: Path):  # type: ignore[no-untyped-def]
    return await open_store(db)
