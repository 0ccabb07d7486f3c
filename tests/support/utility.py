"""Shared by several test modules (moved here from test_utility_api.py, so no test imports another)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from meterchain.backend.access.model import KeyKind, PointKind
from meterchain.backend.access.tables import PartyTables
from meterchain.contract.ack import ocmf_topic
from meterchain.contract.note import NoteSigner
from meterchain.contract.ocmf import build_ocmf, sign_ocmf
from meterchain.mqtt.broker import free_port

from tests.support.backend import T0, Gateway, backend, close

ADMIN = "admin-token-utility-tests"


@dataclass
class World:
    db: Path
    log_key: NoteSigner
    gw_a: Gateway
    gw_b: Gateway
    tokens: dict[str, str] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=lambda: {"gw-a": 0, "gw-b": 0})

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def make_world(tmp_path: Path, rounds: int = 6) -> World:
    gw_a, gw_b = Gateway("gw-a"), Gateway("gw-b")
    log_key = NoteSigner.generate("utility.test/log")
    admin, ingest, sealer, store = await backend(tmp_path, gw_a, gw_b, log_key=log_key)
    world = World(tmp_path / "mc.db", log_key, gw_a, gw_b)
    parties = PartyTables(admin)
    now = int(time.time())
    for utility in ("u1", "u2"):
        await parties.add_utility(utility, utility, now)
    await parties.add_community("c1", "u1", "c1", now)
    await parties.add_household("h1", "c1", "h1", now)
    for point, utility, device, meter in (("mp-1", "u1", "gw-a", "M-1"),
                                          ("mp-2", "u2", "gw-a", "M-2"),
                                          ("mp-3", "u2", "gw-b", "M-3")):
        await parties.add_metering_point(point, utility, "c1" if utility == "u1" else None,
                                         PointKind.CONSUMPTION, now)
        await parties.bind_meter(point, device, meter, 0, None, now)
    await parties.add_occupancy("mp-1", "h1", 0, None, now)
    for name, kind, subject in (("u1", KeyKind.UTILITY, "u1"), ("u2", KeyKind.UTILITY, "u2"),
                                ("h1", KeyKind.HOUSEHOLD, "h1")):
        _, world.tokens[name] = await parties.create_key(kind, subject, name, None, now)
    world.tokens["root"] = ADMIN
    for k in range(1, rounds + 1):  # one seal per round: a checkpoint for every 6 leaves
        await ingest.process(round_of_messages(world, k))
        await sealer.seal_all()
    await close(admin, ingest, sealer, store)
    return world


SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@contextlib.contextmanager
def serving(app: object) -> Iterator[int]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 15
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def round_of_messages(world: World, k: int) -> list[tuple[str, bytes]]:
    """Interval k: gw-a reads M-1 (u1's mp-1) and M-2 (u2's mp-2), gw-b reads M-3 (u2's mp-3);
    each reading goes with its OCMF record, published before it as the agent does."""
    out = []
    for gw, meter in ((world.gw_a, "M-1"), (world.gw_a, "M-2"), (world.gw_b, "M-3")):
        world.seq[gw.device] += 1
        signed = gw.signed(world.seq[gw.device], meter=meter, end=T0 + 900 * k)
        payload = build_ocmf(signed.reading, gateway_id="meterchain-agent", gateway_version="0.1.0")
        out.append((ocmf_topic(gw.device), sign_ocmf(payload, gw.signer).encode()))
        out.append((gw.topic, signed.to_cbor()))
    return out
