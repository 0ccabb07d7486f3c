"""The agent's side of the utility features: an OCMF record signed beside each reading and kept in
the outbox with it; the gateway status message for fleet health."""

from __future__ import annotations

from pathlib import Path

import pytest
from meterchain.agent.ocmf import OcmfCompanion
from meterchain.agent.outbox import CycleEntry, Outbox
from meterchain.agent.status import StatusReporter
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.message import parse_message, sign_reading
from meterchain.contract.ocmf import verify_ocmf
from meterchain.contract.signing import CryptographySigner, generate_private_key_pem
from meterchain.contract.status import GatewayStatus, MeterHealth

from tests.support.contract import make_reading

DEVICE = "gw-1"


class FixedClock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:  # pragma: no cover - not used
        self._now = max(self._now, deadline)


def signed_entry(signer: CryptographySigner, meter: str, end: int) -> CycleEntry:
    def sign(seq: int) -> bytes:
        reading = make_reading(signer, seq, device=DEVICE, meter=meter, start=end - 900, end=end)
        return sign_reading(reading, signer).to_cbor()

    return CycleEntry(meter, end, sign)


async def test_each_stored_reading_has_its_ocmf_record_signed_once(tmp_path: Path) -> None:
    signer = CryptographySigner(generate_private_key_pem())
    path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(path, DEVICE, OcmfCompanion(signer)) as outbox:
        seqs = await outbox.append_cycle(
            [signed_entry(signer, "M-1", 1_800_000_000), signed_entry(signer, "M-2", 1_800_000_000)],
            now=1_800_000_001,
        )
        first = await outbox.readings()
    assert seqs == [1, 2]
    async with await Outbox.open(path, DEVICE, OcmfCompanion(signer)) as outbox:
        again = await outbox.readings()
    assert [r.ocmf for r in again] == [r.ocmf for r in first]  # stored, never re-signed
    for stored in again:
        assert stored.ocmf is not None
        record = verify_ocmf(stored.ocmf, signer.public_key_der)
        reading = parse_message(stored.message).reading
        assert record.payload.fiscal_page == reading.seq
        assert record.payload.gateway_serial == DEVICE
        assert record.payload.meter_serial == reading.meter
        assert [r.value_wh for r in record.payload.readings] == [
            reading.import_wh, reading.export_wh]
        # The two signed forms are never mistaken for each other.
        with pytest.raises(EncodingError):
            parse_message(stored.ocmf.encode())


async def test_a_meter_serial_ocmf_cannot_write_still_stores_the_reading(tmp_path: Path) -> None:
    signer = CryptographySigner(generate_private_key_pem())
    async with await Outbox.open(tmp_path / "o.sqlite", DEVICE, OcmfCompanion(signer)) as outbox:
        assert await outbox.append_cycle([signed_entry(signer, "A|B", 1_800_000_000)], now=1) == [1]
        (stored,) = await outbox.readings()
    assert stored.ocmf is None


async def test_status_reports_backlog_quarantine_last_read_and_drift(tmp_path: Path) -> None:
    signer = CryptographySigner(generate_private_key_pem())
    async with await Outbox.open(tmp_path / "o.sqlite", DEVICE) as outbox:
        await outbox.append_cycle([signed_entry(signer, "M-1", 1_800_000_000)], now=1)
        ticks = iter([100.0, 107.6])
        reporter = StatusReporter(device=DEVICE, outbox=outbox, clock=FixedClock(1_800_000_050),
                                  drift=lambda: {"DLMS-9": -12.4}, monotonic=lambda: next(ticks))
        status = GatewayStatus.from_cbor(await reporter())
    assert status.device == DEVICE and status.time == 1_800_000_050
    assert status.uptime == 7 and status.outbox_depth == 1 and status.quarantined == 0
    assert status.meters == (MeterHealth("DLMS-9", None, -12), MeterHealth("M-1", 1_800_000_000, None))


def test_status_messages_refuse_what_the_contract_does_not_allow() -> None:
    good = GatewayStatus(DEVICE, 1, "0.1.0", 2, 3, 0, (MeterHealth("M-1", 900, 5),))
    assert GatewayStatus.from_cbor(good.to_cbor()) == good
    with pytest.raises(FieldError):
        GatewayStatus(DEVICE, 1, "0.1.0", -2, 3, 0)
    with pytest.raises(FieldError):
        GatewayStatus("bad/id", 1, "0.1.0", 2, 3, 0)
    with pytest.raises(FieldError):
        GatewayStatus(DEVICE, 1, "0.1.0", 2, 3, 0, (MeterHealth("M-1", None, 10**9),))
    with pytest.raises(EncodingError):
        GatewayStatus.from_cbor(good.to_cbor() + b"\x00")
