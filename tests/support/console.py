"""An operator console scenario: the utility world (tests/support/utility.py) plus gateway statuses
(gw-a reporting, gw-b silent for an hour), a webhook of u2 with one dead letter, console invitations
accepted through the real pages, and helpers to sign in with a TOTP code."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyotp
from meterchain.backend.console.tables import ConsoleTables
from meterchain.backend.store import open_store
from meterchain.backend.utility.tables import UtilityTables, Webhook
from meterchain.contract.ack import status_topic
from meterchain.contract.status import GatewayStatus, MeterHealth

from tests.support.backend import T0, backend, close
from tests.support.utility import World, make_world

PASSWORD = "operator-password-1"


@dataclass
class ConsoleWorld:
    world: World
    dead_delivery: int
    invitations: dict[str, str]  # role:scope -> invitation token


async def build_console(tmp_path: Path) -> ConsoleWorld:
    world = await make_world(tmp_path, rounds=2)
    admin, ingest, sealer, store = await backend(tmp_path, log_key=world.log_key)
    real = int(time.time())

    def status(device: str, sent: int, depth: int) -> tuple[str, bytes]:
        return status_topic(device), GatewayStatus(
            device, sent, "0.1.0", 3600, depth, 0, (MeterHealth("M-3", T0 + 900 * 5, -4),)).to_cbor()

    ingest.clock = lambda: real - 3600
    await ingest.process([status("gw-b", real - 3600, 17)])
    ingest.clock = lambda: real
    await ingest.process([status("gw-a", real, 1)])
    hooks = UtilityTables(admin)
    hook = Webhook("wh-0123456789ab", "u2", "https://u2.example/hook", "whsec_test", 1, real - 7200)
    await hooks.add_webhook(hook)
    await hooks.enqueue(hook, [("batch-0", "batch.sealed", b'{"id": "batch-0"}')], 1, real - 7200)
    delivery = (await hooks.deliveries(hook.id, None, 0, 1))[0].id
    await hooks.record_attempt(delivery, state="dead", attempts=8, next_attempt=real - 60,
                               error="HTTP 503 from https://u2.example/hook", now=real - 60)
    await close(admin, ingest, sealer, store)
    db = await open_store(str(world.db))
    invitations = {}
    for role, scope in (("operator", "all"), ("auditor", "all"), ("operator", "utility:u2")):
        invitations[f"{role}:{scope}"], _ = await ConsoleTables(db).invite(role, scope, real)  # type: ignore[arg-type]
    await db.close()
    return ConsoleWorld(world, delivery, invitations)


def secret_of(page: str) -> str:
    """The TOTP key shown on an invitation page."""
    found = re.search(r'id="totp-secret">([A-Z2-7]{32})<', page)
    assert found, page
    return found.group(1)


def code(secret: str, offset: int = 0) -> str:
    """The TOTP code of ``secret`` now (``offset`` steps of 30 s later)."""
    return pyotp.TOTP(secret).at(int(time.time()) + 30 * offset)
