"""Through a real broker: the agent signs an OCMF record beside each reading and reports its
status; the real ingest keeps every acked reading's record, which the API exports verbatim and
pyocmf verifies; fleet health sees the gateway, then its silence, then its return. And the
utility's own tool, ``meterchain utility pull|verify`` run as a process, proves which metering
point each reading counts for: a page with a reading moved to another point fails
``point-assigned`` (issue 17)."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path

import cbor2
import pytest
from meterchain.backend.access.model import KeyKind, PointKind
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.app import create_app
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import open_sqlite, open_store
from meterchain.contract.note import NoteSigner
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent import DEVICE, running, start_gateway, wait_until
from tests.support.cli import run
from tests.support.utility import serving

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


async def test_the_utility_cli_proves_each_readings_metering_point_and_fails_a_moved_one(
    tmp_path: Path, broker: RunningBroker
) -> None:
    gateway = await start_gateway(tmp_path / "gateway", broker.url)
    db = tmp_path / "backend.db"
    admin = await open_sqlite(db)
    log_key = NoteSigner.generate("e2e.test/log")
    ingest = Ingest(await open_store(db), broker_url=broker.url)
    sealer = Sealer(await open_store(db), log_key)
    ingest.on_commit = sealer.notify
    now = int(time.time())
    try:
        await enrol(admin, DEVICE, gateway.spki, now)
        parties = PartyTables(admin)
        await parties.add_utility("SW1", "Stadtwerke", now)
        for point, meter in (("DE000A", "630001"), ("DE000B", "120002")):  # the two emulated meters
            await parties.add_metering_point(point, "SW1", None, PointKind.CONSUMPTION, now)
            await parties.bind_meter(point, DEVICE, meter, 0, None, now)
        _, token = await parties.create_key(KeyKind.UTILITY, "SW1", "e2e", None, now)
        agent = gateway.agent()
        async with running(ingest.run), running(agent.run):
            await wait_until(lambda: agent.metrics.readings_acked._value.get() >= 4, 30,
                             "four acked readings")
        await sealer.seal_all()
        key = str(log_key.verifier)
        with serving(create_app(str(db), "e2e-admin", log_key.verifier)) as port:
            code, out = await run("utility", "pull", "--api", f"http://127.0.0.1:{port}", "--key", token,
                                  "--log-key", key, "--out", str(tmp_path / "pages"))
        assert code == 0, out
        (page,) = sorted((tmp_path / "pages").glob("*.cbor"))
        doc = cbor2.loads(page.read_bytes())
        points = {(e["point"], cbor2.loads(cbor2.loads(e["message"])[0])["meter"]) for e in doc["entries"]}
        assert points == {("DE000A", "630001"), ("DE000B", "120002")}
        assert len(doc["assignments"]) == 2  # one binding leaf per point, opened

        moved = next(e for e in doc["entries"] if e["point"] == "DE000A")
        moved["point"] = "DE000B"
        page.write_bytes(cbor2.dumps(doc, canonical=True))
        code, out = await run("utility", "verify", str(page), "--log-key", key)
        assert code == 1 and "[point-assigned]" in out, out
        assert f"ties {DEVICE}/630001 to DE000A, not DE000B" in " ".join(out.split())
    finally:
        ingest.close()
        await ingest.store.close()
        await sealer.store.close()
        await admin.close()
        await gateway.bus.stop()
