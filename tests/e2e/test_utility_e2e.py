"""Through a real broker: the agent signs an OCMF record beside each reading and reports its
status; the real ingest keeps every acked reading's record, which the API exports verbatim and
pyocmf verifies; fleet health sees the gateway, then its silence, then its return."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path

import pytest
from meterchain.backend.api.app import create_app
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.store import open_store
from meterchain.contract.note import NoteSigner
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent import DEVICE, running, start_gateway, wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(120)
ADMIN = "e2e-admin"


async def test_ocmf_and_status_flow_from_agent_to_utility_api(
    tmp_path: Path, broker: RunningBroker
) -> None:
    pyocmf = pytest.importorskip("pyocmf")
    gateway = await start_gateway(tmp_path / "gateway", broker.url)
    db = tmp_path / "backend.db"
    admin = await open_store(db)
    ingest = Ingest(await open_store(db), broker_url=broker.url)
    app = create_app(str(db), ADMIN, NoteSigner.generate("e2e.test/log").verifier)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        await enrol(admin, DEVICE, gateway.spki, int(time.time()))
        agent = gateway.agent(status_interval=0.3)
        async with running(ingest.run):
            async with running(agent.run):
                await wait_until(lambda: agent.metrics.readings_acked._value.get() >= 6, 30,
                                 "six acked readings")
                await wait_until(lambda: ingest.stats["status:stored"] >= 2, 10, "status messages")
            acked = int(agent.metrics.readings_acked._value.get())
            with TestClient(app) as http:
                records = http.get(f"/api/v1/devices/{DEVICE}/ocmf?limit=10000", headers=auth).json()
                fleet = http.get("/api/v1/fleet?silent_after=60", headers=auth).json()
            # Every acked reading has its record, stored before the ack.
            seqs = {r["seq"] for r in records}
            assert set(range(1, acked + 1)) <= seqs
            for r in records:
                theirs = pyocmf.OCMF.from_string(r["record"], strict=True)
                assert theirs.verify_signature(gateway.spki.hex()) is True
                row = await admin.reading(DEVICE, r["seq"])
                if row is not None:
                    assert (theirs.payload.MS, r["time"]) == (row.meter, row.end)
            (health,) = fleet["gateways"]
            assert health["device"] == DEVICE and not health["silent"] and fleet["alerts"] == []
            assert health["firmware"] and {m["meter"] for m in health["meters"]} == {"630001", "120002"}

            await asyncio.sleep(2.5)  # the agent is stopped: silent beyond one second (whole s)
            with TestClient(app) as http:
                fleet = http.get("/api/v1/fleet?silent_after=1", headers=auth).json()
            assert [(a["device"], a["kind"]) for a in fleet["alerts"]] == [(DEVICE, "silent")]

            before = ingest.stats["status:stored"]
            async with running(gateway.agent(status_interval=0.3).run):
                await wait_until(lambda: ingest.stats["status:stored"] > before, 15, "it is back")
            with TestClient(app) as http:
                fleet = http.get("/api/v1/fleet?silent_after=1", headers=auth).json()
            assert fleet["alerts"] == [] and not fleet["gateways"][0]["silent"]
    finally:
        ingest.close()
        await ingest.store.close()
        await admin.close()
        await gateway.bus.stop()
