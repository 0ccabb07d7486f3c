"""What a utility pays to fetch its readings with proofs: one signed-batch page of up to 500
readings (each with its inclusion proof, plus the device leaves and the consistency proof) against
the baseline of one proof bundle per reading (GET .../bundle), same store, same run. Both are
built by the backend's own functions, without HTTP.

    .venv/bin/python bench/bench_utility_batch.py --devices 20 --readings 500
    .venv/bin/python bench/bench_utility_batch.py --devices 500 --readings 20 --interleave

With ``--interleave`` the gateways report interval by interval, as a fleet does, so a page spans
many metering points and carries the opening of each one's binding leaf (issue 17); without it
each gateway's readings are ingested in one block and a page spans one or two points.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from meterchain.backend.access.model import KeyKind, PointKind, Principal, Scope
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.proofs import build_bundle
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import open_store
from meterchain.backend.utility.batches import build_batch
from meterchain.contract import cbor
from meterchain.contract.ack import readings_topic
from meterchain.contract.message import sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register
from meterchain.contract.signing import generate_private_key_pem, key_id, load_signer

T0 = 1_700_000_100 - 1_700_000_100 % 900


async def populate(path: Path, devices: int, readings: int, interleave: bool = False) -> None:
    """Signed readings through the real ingest and sealer; every device's meter is the utility's
    (each on its own metering point)."""
    store = await open_store(path)
    parties = PartyTables(store)
    await parties.add_utility("u", "", 0)
    ingest = Ingest(await open_store(path))
    sealer = Sealer(await open_store(path), NoteSigner.generate("bench.test/log"), max_leaves=5000)
    signers = []
    for d in range(devices):
        device, signer = f"gw-{d}", load_signer(generate_private_key_pem())
        signers.append((device, signer))
        await enrol(store, device, signer.public_key_der, 0)
        await parties.add_metering_point(f"mp-{d}", "u", None, PointKind.CONSUMPTION, 0)
        await parties.bind_meter(f"mp-{d}", device, f"M-{d}", 0, None, 0)

    def message(d: int, seq: int) -> tuple[str, bytes]:
        device, signer = signers[d]
        end = T0 + 900 * seq
        reading = Reading(device=device, key_id=key_id(signer.public_key_der), seq=seq,
                          meter=f"M-{d}", start=end - 900, end=end,
                          registers={IMPORT_OBIS: Register(1000 * seq, "Wh"),
                                     EXPORT_OBIS: Register(0, "Wh")})
        return readings_topic(device), sign_reading(reading, signer).to_cbor()

    blocks = ([[message(d, seq) for d in range(devices)] for seq in range(1, readings + 1)] if interleave
              else [[message(d, seq) for seq in range(1, readings + 1)] for d in range(devices)])
    for block in blocks:
        await ingest.process(block)
        await sealer.seal_all()
    ingest.close()
    for s in (store, ingest.store, sealer.store):
        await s.close()


async def measure(path: Path, page: int, rounds: int) -> dict[str, float]:
    store = await open_store(path)
    utility = Principal(KeyKind.UTILITY, "u", frozenset({Scope.READ}))
    size = (await store.latest_checkpoint()).size  # type: ignore[union-attr]
    batch_times, bundle_times = [], []
    doc = await build_batch(store, utility, size_from=0, size_to=size, cursor=None, limit=page)
    rows = [(e.device, e.seq) for e in doc.entries]
    for _ in range(rounds):
        started = time.perf_counter()
        doc = await build_batch(store, utility, size_from=0, size_to=size, cursor=None, limit=page)
        doc.to_cbor()
        batch_times.append((time.perf_counter() - started) / len(doc.entries))
        started = time.perf_counter()
        for device, seq in rows:
            await build_bundle(store, device, seq)
        bundle_times.append((time.perf_counter() - started) / len(rows))
    await store.close()
    return {"tree": size, "entries": len(rows), "batch_us": statistics.median(batch_times) * 1e6,
            "bundle_us": statistics.median(bundle_times) * 1e6,
            "cbor_bytes_per_entry": len(doc.to_cbor()) / len(doc.entries),
            "openings": len(doc.assignments),
            "keys_bytes_per_entry": len(cbor.encode(doc.to_obj()["keys"])) / len(doc.entries),
            "openings_bytes_per_entry": len(cbor.encode(doc.to_obj()["assignments"])) / len(doc.entries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--readings", type=int, default=500)
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interleave", action="store_true",
                        help="readings interval by interval across gateways (pages span many points)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        asyncio.run(populate(path, args.devices, args.readings, args.interleave))
        r = asyncio.run(measure(path, args.page, args.rounds))
    print(f"tree {r['tree']} leaves, page of {r['entries']} readings (median of {args.rounds})")
    print(f"signed batch page: {r['batch_us']:.0f} µs per reading "
          f"({r['cbor_bytes_per_entry']:.0f} B CBOR per reading, of which device leaves "
          f"{r['keys_bytes_per_entry']:.0f} B and {r['openings']:.0f} binding openings "
          f"{r['openings_bytes_per_entry']:.0f} B)")
    print(f"one bundle per reading (baseline): {r['bundle_us']:.0f} µs per reading")
    print(f"ratio bundle / batch: {r['bundle_us'] / r['batch_us']:.1f}x")


if __name__ == "__main__":
    main()
