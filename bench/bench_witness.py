"""Witness cosigning (issue 17): reading arrival -> cosigned checkpoint with three witness
processes on loopback, and bundle verification with a 2-of-3 quorum beside single-key
verification in the same run.

    .venv/bin/python bench/bench_witness.py [--n 50] [--verify 2000]

The first figure is one reading committed by ingest, sealed (seal_once, as the sealer does it
when its timer or its leaf count fires) and cosigned by three `meterchain witness` processes
over HTTP (the sealer's Cosigning: in parallel, each with the consistency proof from storage),
until the note with three cosignatures is stored. It leaves out the wait for the sealer's timer
(seal_interval, 5 s by default), which is what bounds arrival -> checkpoint today
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support

from meterchain.backend.log.cosigning import Cosigning  # noqa: E402
from meterchain.backend.log.proofs import build_bundle  # noqa: E402
from meterchain.contract.bundle import verify_bundle  # noqa: E402
from meterchain.contract.cosignature import CosignerKey  # noqa: E402
from meterchain.contract.tlog_policy import Witness, WitnessPolicy  # noqa: E402

from tests.support.backend import Gateway, backend, close  # noqa: E402
from tests.support.witness import WitnessProcess  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(n: int, verify_n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gw = Gateway("gw-1")
        admin, ingest, sealer, api = await backend(root, gw)
        witnesses = [WitnessProcess.create(root / f"w{i}", f"witness.bench/w{i}", str(sealer.signer.verifier))
                     for i in (1, 2, 3)]
        for witness in witnesses:
            witness.start()
        try:
            policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", CosignerKey.parse(w.vkey), w.url)
                                              for i, w in enumerate(witnesses, 1)])
            cosigning = Cosigning(policy, sealer.store, timeout=5.0)
            sealer.on_sealed = cosigning.after_seal
            await ingest.process([gw.message(1)])
            await sealer.seal_all()  # first contact (409, then old 0) out of the figures
            total, cosign_part = [], []
            for seq in range(2, n + 2):
                t0 = time.perf_counter()
                await ingest.process([gw.message(seq)])
                t1 = time.perf_counter()
                await sealer.seal_once()
                cosign_part.append(time.perf_counter() - t1)
                note = (await api.latest_checkpoint()).note
                total.append(time.perf_counter() - t0)
                assert note.count("\u2014 witness.bench/") == 3, note
            ms = [1000 * v for v in total]
            print(f"arrival -> cosigned checkpoint (3 witnesses, loopback), n={n}: "
                  f"p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, max {max(ms):.1f} ms; "
                  f"of which seal + cosign p50 {1000 * statistics.median(cosign_part):.1f} ms")

            bundle = await build_bundle(api, "gw-1", 2)
            for args in ((), (policy,)):  # both hold before anything is timed
                verify_bundle(bundle, sealer.signer.verifier, *args)
            best = {}
            for label, args in (("single key", ()), ("2-of-3 quorum", (policy,))):
                runs = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    for _ in range(verify_n):
                        verify_bundle(bundle, sealer.signer.verifier, *args)
                    runs.append((time.perf_counter() - t0) / verify_n)
                best[label] = min(runs)
                print(f"bundle verification, {label}: {1e3 * best[label]:.3f} ms per bundle (best of 3 x {verify_n})")
            print(f"ratio 2-of-3 / single key: {best['2-of-3 quorum'] / best['single key']:.2f}")
            print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            await cosigning.close()
        finally:
            for witness in witnesses:
                witness.stop()
            await close(admin, ingest, sealer, api)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--verify", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.verify))
