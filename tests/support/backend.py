"""Test helpers for the backend: a gateway that signs contract readings, and a backend on disk."""

from __future__ import annotations

import time
from pathlib import Path

from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import SqliteStore, open_store
from meterchain.contract.ack import readings_topic
from meterchain.contract.message import SignedReading, sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register
from meterchain.contract.signing import generate_private_key_pem, key_id, load_signer

from tests.support.store import StoreFactory

T0 = 1_700_000_100 - 1_700_000_100 % 900


class Gateway:
    """Signs readings for one device the way an agent does."""

    def __init__(self, device: str, meter: str = "SDM630-1") -> None:
        self.device = device
        self.meter = meter
        self.signer = load_signer(generate_private_key_pem())
        self.topic = readings_topic(device)

    @property
    def public_key(self) -> bytes:
        return self.signer.public_key_der

    def signed(self, seq: int, *, meter: str | None = None, end: int | None = None,
               import_wh: int | None = None, signer=None) -> SignedReading:  # type: ignore[no-untyped-def]
        signer = signer or self.signer
        end = end if end is not None else T0 + 900 * seq
        reading = Reading(
            device=self.device,
            key_id=key_id(signer.public_key_der),
            seq=seq,
            meter=meter or self.meter,
            start=end - 900,
            end=end,
            registers={
                IMPORT_OBIS: Register(import_wh if import_wh is not None else 1000 * seq, "Wh"),
                EXPORT_OBIS: Register(7 * seq, "Wh"),
            },
        )
        return sign_reading(reading, signer)

    def message(self, seq: int, **kwargs: object) -> tuple[str, bytes]:
        return self.topic, self.signed(seq, **kwargs).to_cbor()  # type: ignore[arg-type]


async def backend(where: Path | StoreFactory, *devices: Gateway, max_leaves: int = 1000,
                  log_key: NoteSigner | None = None) -> tuple[SqliteStore, Ingest, Sealer, SqliteStore]:
    """A store with ``devices`` enrolled, an ingest and a sealer on their own connections. The
    store is ``where/mc.db``, or the factory's (either kind: conftest's ``store_factory``)."""
    path = where.location if isinstance(where, StoreFactory) else where / "mc.db"
    admin = await open_store(path)
    for gateway in devices:
        await enrol(admin, gateway.device, gateway.public_key, int(time.time()))
    ingest = Ingest(await open_store(path))
    sealer = Sealer(await open_store(path), log_key or NoteSigner.generate("test.example/log"),
                    max_leaves=max_leaves)
    ingest.on_commit = sealer.notify
    return admin, ingest, sealer, await open_store(path)


async def close(*parts: object) -> None:
    for part in parts:
        if isinstance(part, Ingest):
            part.close()
            await part.store.close()
        elif isinstance(part, Sealer):
            await part.store.close()
        else:  # a store of either kind
            await part.close()  # type: ignore[attr-defined]
