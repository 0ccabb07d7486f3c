"""Test helpers for settlement: a community of metering points on signing gateways, in a store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from meterchain.backend.access.model import PointKind
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.settlement.runner import SettlementRunner
from meterchain.backend.settlement.tables import SettlementTables, Terms
from meterchain.backend.store import SqliteStore, open_store
from meterchain.contract.ack import readings_topic
from meterchain.contract.message import sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register
from meterchain.contract.signing import Signer, generate_private_key_pem, key_id, load_signer

T0 = 1_701_381_600  # 2023-11-30 22:00 UTC: a community whose November closes two hours in
COMMUNITY = "c-sun"
TERMS: dict[str, object] = {
    "interval_seconds": 900, "deadline_seconds": 1800, "timezone": "UTC", "rule": "mid_market",
    "retail_price": 300_000, "feed_in_price": 80_000, "local_network_fee": 20_000,
    "grid_network_fee": 60_000, "platform_fee": 5_000, "monthly_fee": 4_000_000,
    "vat_basis_points": 1900, "co2_grams_per_kwh": 380}


@dataclass
class Site:
    """One store, an ingest, a sealer and the settlement runner; gateways sign readings."""

    path: Path
    admin: SqliteStore
    ingest: Ingest
    sealer: Sealer
    runner: SettlementRunner
    log_key: NoteSigner
    signers: dict[str, Signer] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    registers: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    @property
    def tables(self) -> SettlementTables:
        return SettlementTables(self.admin)

    async def member(self, point: str, device: str, meter: str, since: int = T0) -> None:
        """A metering point of the community, measured by ``device``'s ``meter`` from ``since``."""
        parties = PartyTables(self.admin)
        if device not in self.signers:
            self.signers[device] = load_signer(generate_private_key_pem())
            await enrol(self.admin, device, self.signers[device].public_key_der, int(time.time()))
        await parties.add_metering_point(point, "u-1", COMMUNITY, PointKind.CONSUMPTION, T0)
        await parties.bind_meter(point, device, meter, since, None, T0)

    def message(self, device: str, meter: str, end: int, import_wh: int, export_wh: int,
                status: int = 0) -> tuple[str, bytes]:
        """A signed reading of cumulative registers ``(import, export)`` at ``end``."""
        signer = self.signers[device]
        seq = self.seqs[device] = self.seqs.get(device, 0) + 1
        reading = Reading(device=device, key_id=key_id(signer.public_key_der), seq=seq,
                          meter=meter, start=end - 900, end=end,
                          registers={IMPORT_OBIS: Register(import_wh, "Wh"),
                                     EXPORT_OBIS: Register(export_wh, "Wh")}, status=status)
        return readings_topic(device), sign_reading(reading, signer).to_cbor()

    async def send(self, *messages: tuple[str, bytes]) -> None:
        report = await self.ingest.process(list(messages))
        assert not report.rejected, report.rejected

    async def step(self, device: str, meter: str, end: int, add_import: int, add_export: int
                   ) -> tuple[str, bytes]:
        """The next reading of a meter whose registers grew by the given Wh."""
        regs = self.registers.setdefault((device, meter), [1_000_000, 50_000])
        regs[0] += add_import
        regs[1] += add_export
        return self.message(device, meter, end, regs[0], regs[1])


async def open_site(tmp_path: Path, **terms: object) -> Site:
    path = tmp_path / "mc.db"
    admin = await open_store(path)
    parties = PartyTables(admin)
    await parties.add_utility("u-1", "Stadtwerke", T0)
    await parties.add_community(COMMUNITY, "u-1", "Sonnenhof", T0)
    await SettlementTables(admin).set_terms(
        Terms(COMMUNITY, T0, **{**TERMS, **terms}), T0)  # type: ignore[arg-type]
    log_key = NoteSigner.generate("test.example/log")
    ingest = Ingest(await open_store(path))
    sealer = Sealer(await open_store(path), log_key, max_leaves=100_000)
    await sealer.start()
    runner = SettlementRunner(await open_store(path))
    return Site(path, admin, ingest, sealer, runner, log_key)


async def close_site(site: Site) -> None:
    site.ingest.close()
    await site.ingest.store.close()
    await site.sealer.store.close()
    await site.runner.store.close()
    await site.admin.close()


async def community(tmp_path: Path, **terms: object) -> Site:
    site = await open_site(tmp_path, **terms)
    for point, device, meter in MEMBERS:
        await site.member(point, device, meter)
    return site


async def readings_at(site: Site, end: int, *, skip: tuple[str, ...] = (), scale: int = 1) -> None:
    messages = []
    for point, device, meter in MEMBERS:
        if point not in skip:
            imp, exp = FLOW[point]
            messages.append(await site.step(device, meter, end, imp * scale, exp * scale))
    await site.send(*messages)


MEMBERS = (("mp-1", "gw-a", "M1"), ("mp-2", "gw-a", "M2"), ("mp-3", "gw-b", "M3"))


#: Wh per interval: (import, export) of each member; mp-2 is a PV prosumer.
FLOW = {"mp-1": (400, 0), "mp-2": (30, 600), "mp-3": (250, 0)}
