"""A community that trades by auction, for the market, conditions, wallet and ratings tests.

Eight households in Berlin, one metering point each: h-1 … h-3 have PV (sellers at midday),
h-4 … h-8 only consume. A week of signed quarter-hour readings from 27 May 2024 (so May closes
and its bills are issued) up to NOW (Mon 3 June 2024, 12:00 Berlin), ingested, sealed and settled
by the real runner. Listings: h-1 asks 0.15 €/kWh, h-2 asks 0.20 and is a green source, h-5 buys
green only, h-4 bids at most 0.25. Each household has a login ``user-k`` and an API key.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from meterchain.backend.access.model import KeyKind, PointKind
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.settlement.runner import SettlementRunner
from meterchain.backend.settlement.tables import SettlementTables, Terms
from meterchain.backend.store import open_store
from meterchain.backend.web import accounts
from meterchain.backend.web.tables import WebTables
from meterchain.contract.note import NoteSigner
from meterchain.contract.signing import generate_private_key_pem, load_signer

from tests.support.settlement import Site

ZONE = "Europe/Berlin"
START = int(dt.datetime(2024, 5, 27, 0, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
NOW = int(dt.datetime(2024, 6, 3, 12, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
COMMUNITY = "sonnenhof"
HOUSEHOLDS = [f"h-{k}" for k in range(1, 9)]
SELLERS = ("h-1", "h-2", "h-3")
PASSWORD = "market-password-1"
TERMS = {"interval_seconds": 900, "deadline_seconds": 3600, "timezone": ZONE,
         "market": "auction", "rule": "mid_market", "retail_price": 320_000,
         "feed_in_price": 82_000, "local_network_fee": 25_000, "grid_network_fee": 75_000,
         "platform_fee": 5_000, "monthly_fee": 5_000_000, "vat_basis_points": 1900,
         "co2_grams_per_kwh": 380}


@dataclass
class Market:
    site: Site
    keys: dict[str, str] = field(default_factory=dict)  # household -> API token

    @property
    def db(self) -> Path:
        return self.site.path


def point(household: str) -> str:
    return "mp-" + household.removeprefix("h-")


def flow(household: str, end: int) -> tuple[int, int]:
    """(import, export) Wh of the quarter hour ending at ``end``: PV sellers export around noon."""
    local = dt.datetime.fromtimestamp(end - 900, ZoneInfo(ZONE))
    k = int(household.removeprefix("h-"))
    base = 90 + (k * 37 + local.hour * 11 + local.minute) % 120
    if household in SELLERS and 9 <= local.hour < 17:
        sun = (8 - abs(local.hour - 13) * 2) * (30 + 10 * k)
        return (0, max(0, sun - base // 3)) if sun > base // 3 else (base // 3 - sun, 0)
    return base, 0


async def send_until(market: Market, first_end: int, last_end: int) -> None:
    """Readings of every household for interval ends in [first_end, last_end], in batches."""
    site, messages = market.site, []
    for end in range(first_end, last_end + 1, 900):
        for h in HOUSEHOLDS:
            imp, exp = flow(h, end) if end > START else (0, 0)
            messages.append(await site.step(f"gw-{h}", "M1", end, imp, exp))
        if len(messages) >= 800:
            await site.send(*messages)
            messages = []
    if messages:
        await site.send(*messages)
    await site.sealer.seal_all()


async def build_market(tmp_path: Path) -> Market:
    path = tmp_path / "mc.db"
    admin = await open_store(path)
    parties = PartyTables(admin)
    await parties.add_utility("u-1", "Stadtwerke", START)
    await parties.add_community(COMMUNITY, "u-1", "Sonnenhof", START)
    await SettlementTables(admin).set_terms(Terms(COMMUNITY, START, **TERMS), START)  # type: ignore[arg-type]
    log_key = NoteSigner.generate("market.test/log")
    sealer = Sealer(await open_store(path), log_key, max_leaves=100_000)
    await sealer.start()
    site = Site(path, admin, Ingest(await open_store(path)), sealer,
                SettlementRunner(await open_store(path), clock=lambda: NOW), log_key)
    market = Market(site)
    web = WebTables(admin)
    hashed = accounts.hash_password(PASSWORD)
    for k, h in enumerate(HOUSEHOLDS, start=1):
        device = f"gw-{h}"
        site.signers[device] = load_signer(generate_private_key_pem())
        await enrol(admin, device, site.signers[device].public_key_der, int(time.time()))
        await parties.add_household(h, COMMUNITY, f"Household {k}", START)
        await parties.add_metering_point(point(h), "u-1", COMMUNITY, PointKind.CONSUMPTION, START)
        await parties.bind_meter(point(h), device, "M1", START, None, START)
        await parties.add_occupancy(point(h), h, START, None, START)
        await web.set_timezone(h, ZONE)
        token, _ = await web.create_link("invite", h, None, int(time.time()))
        await web.accept_invite(token, f"user-{k}", hashed, int(time.time()))
        _, market.keys[h] = await parties.create_key(KeyKind.HOUSEHOLD, h, f"{h} app", None,
                                                     int(time.time()))
    tables = SettlementTables(admin)
    for h, buy, ask, green, green_only in (("h-1", None, 150_000, False, False),
                                           ("h-2", None, 200_000, True, False),
                                           ("h-4", 250_000, None, False, False),
                                           ("h-5", None, None, False, True)):
        await tables.post_listing(COMMUNITY, point(h), START, buy, ask, green, green_only, None,
                                  START)
    await send_until(market, START, NOW)
    while True:  # the runner works a long backlog off in steps
        report = await site.runner.settle_community(COMMUNITY, NOW)
        if not report.settled:
            break
    await site.sealer.seal_all()
    return market


async def close_market(market: Market) -> None:
    from tests.support.settlement import close_site

    await close_site(market.site)


async def reopen_market(market: Market) -> Market:
    """The same community with fresh store connections (after ``close_market``), keeping the
    gateways' keys, sequence numbers and registers so readings continue where they stopped."""
    site, path = market.site, market.site.path
    sealer = Sealer(await open_store(path), site.log_key, max_leaves=100_000)
    await sealer.start()
    market.site = Site(path, await open_store(path), Ingest(await open_store(path)), sealer,
                       SettlementRunner(await open_store(path), clock=lambda: NOW), site.log_key,
                       site.signers, site.seqs, site.registers)
    return market


async def next_settlement(market: Market, intervals: int, now: int) -> None:
    """``intervals`` more quarter hours of readings after NOW, then one settlement pass at ``now``."""
    await reopen_market(market)
    try:
        await send_until(market, NOW + 900, NOW + 900 * intervals)
        await market.site.runner.settle_community(COMMUNITY, now)
        await market.site.sealer.seal_all()
    finally:
        await close_market(market)
