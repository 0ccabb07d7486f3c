"""Readings from a gateway whose clock runs ahead (issue 18): refused for good once authenticated."""

from __future__ import annotations

import time
from pathlib import Path

from meterchain.backend.ingest.checks import MAX_FUTURE_SECONDS, check_message
from meterchain.contract.signing import generate_private_key_pem, load_signer

from tests.support.backend import Gateway, backend, close


async def test_a_reading_ending_too_far_ahead_consumes_its_sequence_and_is_quarantined(
    tmp_path: Path,
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    now = int(time.time())
    ingest.clock = lambda: float(now)
    at_limit = gw.message(1, end=now + MAX_FUTURE_SECONDS)
    ahead = gw.message(2, end=now + 86_400)  # the gateway's clock a day ahead
    report = await ingest.process([at_limit, ahead])
    assert report.stored == 1 and report.rejected == {"future": 1}
    ack = report.acks[0]
    assert ack.upto == 2  # the authenticated reading consumed its sequence
    [rejection] = ack.rejected
    assert (rejection.seq, rejection.reason) == (2, "future")
    assert "86400 s after the backend's clock" in rejection.detail and "NTP" in rejection.detail
    assert await api.reading("gw-1", 2) is None
    await close(admin, ingest, sealer, api)


async def test_a_forged_reading_ahead_is_junk_and_leaves_the_sequence_to_the_device(
    tmp_path: Path,
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    now = int(time.time())
    ingest.clock = lambda: float(now)
    forger = load_signer(generate_private_key_pem())
    forged = gw.message(1, end=now + 86_400, signer=forger)
    checked = check_message(forged[0], forged[1], {}, now)
    assert checked.rejection is not None and checked.rejection.reason == "unknown-device"
    report = await ingest.process([forged])
    assert report.rejected.get("future") is None and not report.acks
    report = await ingest.process([gw.message(1, end=now - 60)])
    assert report.stored == 1 and report.acks[0].upto == 1
    await close(admin, ingest, sealer, api)

