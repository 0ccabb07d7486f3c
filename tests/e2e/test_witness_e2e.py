"""The consortium end to end: `backend serve` with a witness policy (2 of 3), three `meterchain
witness` processes, and `meterchain monitor --once` over HTTP. Every checkpoint the sealer makes
is cosigned by the witnesses that are up; the monitor accepts the log while two of them are and
alerts (exit 1, check `witnesses`) once only one is left."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from meterchain.backend.config import BackendConfig
from meterchain.backend.devices.registry import enrol
from meterchain.backend.service import load_or_create_log_key, serve
from meterchain.backend.store import open_store
from meterchain.contract.cosignature import CosignerKey, verify_cosignatures
from meterchain.contract.tlog_policy import Witness, WitnessPolicy
from meterchain.mqtt.broker import RunningBroker, free_port

from tests.support.backend import Gateway
from tests.support.witness import WitnessProcess

pytestmark = pytest.mark.timeout(180)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _monitor(url: str, vkey: Path, policy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterchain.cli.main", "monitor", url, "--log-key", str(vkey),
                           "--policy", str(policy), "--once"], capture_output=True, text=True, timeout=60)


async def test_backend_with_three_witnesses_and_the_monitor(tmp_path: Path, broker: RunningBroker) -> None:
    signer = load_or_create_log_key(tmp_path / "log.key", "e2e.meterchain.test/log")
    (tmp_path / "log.pub").write_text(str(signer.verifier) + "\n")
    witnesses = [WitnessProcess.create(tmp_path / f"w{i}", f"witness.e2e/w{i}", str(signer.verifier))
                 for i in (1, 2, 3)]
    for witness in witnesses:
        witness.start()
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", CosignerKey.parse(w.vkey), w.url)
                                      for i, w in enumerate(witnesses, 1)])
    (tmp_path / "witnesses.policy").write_text(policy.to_text())
    port = free_port()
    config = BackendConfig(db=str(tmp_path / "backend.sqlite"), broker=broker.url, http_port=port,
                           log_key=str(tmp_path / "log.key"), origin="e2e.meterchain.test/log",
                           admin_token="e2e-admin-token", seal_interval=0.3,
                           witness_policy=str(tmp_path / "witnesses.policy"), witness_timeout=5.0)
    store = await open_store(config.db)
    stop, ready = asyncio.Event(), asyncio.Event()
    backend = asyncio.create_task(serve(config, stop=stop, ready=ready))
    url = f"http://127.0.0.1:{port}"

    async def cosigned_at_least(size: int, by: int) -> str:
        deadline = time.monotonic() + 30
        while True:
            row = await store.latest_checkpoint()
            if row is not None and row.size >= size and len(verify_cosignatures(row.note, policy.keys)) >= by:
                return row.note
            assert time.monotonic() < deadline, f"no checkpoint of size >= {size} cosigned by {by}"
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(ready.wait(), 30)
        size = 0
        for down, expected in ((0, 3), (1, 2), (2, 1)):
            if down:
                witnesses[down - 1].stop()
            await enrol(store, f"gw-{down}", Gateway(f"gw-{down}").public_key, int(time.time()))
            size = max(size + 1, 2)  # the device leaf (and the control-key leaf before the first)
            note = await cosigned_at_least(size, expected)
            served = await asyncio.to_thread(_get, f"{url}/checkpoint")
            assert served.startswith(note.split("\n\n")[0])
            assert len(verify_cosignatures(served, policy.keys)) == expected
            done = await asyncio.to_thread(_monitor, url, tmp_path / "log.pub", tmp_path / "witnesses.policy")
            if expected >= 2:
                assert done.returncode == 0, done.stdout + done.stderr
            else:
                assert done.returncode == 1
                assert "[witnesses]" in done.stderr and "needs 2 of w1, w2, w3, cosigned by w3" in done.stderr
    finally:
        stop.set()
        await asyncio.wait_for(backend, 30)
        await store.close()
        for witness in witnesses:
            witness.stop()
