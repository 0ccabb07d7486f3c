"""DlmsMeterClient over an in-memory transport: the seam where faults and odd meters plug in."""

from __future__ import annotations

from dataclasses import replace

import pytest
from meterchain.bridge.dlms.apdu import AccessSelection, AttributeDescriptor, GetResult
from meterchain.bridge.dlms.axdr import Data, Tag
from meterchain.bridge.dlms.cosem import datetime_from_utc
from meterchain.bridge.dlms.emulator import EmulatedDlmsMeter, default_settings
from meterchain.bridge.dlms.errors import CosemValueError, LinkError
from meterchain.bridge.dlms.obis import CLOCK_OBIS
from meterchain.bridge.dlms.serial_client import DlmsMeterClient
from meterchain.bridge.dlms.server import ServerConnection

START = 1_767_225_600
NOW = START + 86400 + 600


class MemoryTransport:
    """Bytes go straight to a ServerConnection; its answers come back on the next read."""

    def __init__(self, server: ServerConnection) -> None:
        self.server = server
        self.pending = b""
        self.opened = False

    async def open(self) -> None:
        self.opened = True

    def write(self, data: bytes) -> None:
        self.server.receive_data(data, NOW)
        self.pending += b"".join(self.server.frames_to_send())

    async def read(self, timeout: float) -> bytes:
        data, self.pending = self.pending, b""
        return data

    def close(self) -> None:
        self.opened = False


class MeterWithoutDeviation(EmulatedDlmsMeter):
    """A meter whose clock leaves the deviation unspecified (0x8000) and states it in time_zone."""

    def get(
        self, descriptor: AttributeDescriptor, access: AccessSelection | None, now: int
    ) -> GetResult:
        if descriptor.instance == CLOCK_OBIS and descriptor.attribute == 2:
            local = datetime_from_utc(now, self.deviation, 0x80)
            return Data.octets(replace(local, deviation=None).encode())
        return super().get(descriptor, access, now)


async def test_unspecified_deviation_falls_back_to_time_zone() -> None:
    server = ServerConnection(
        default_settings(), MeterWithoutDeviation(start=START, deviation=-120)
    )
    transport = MemoryTransport(server)
    client = DlmsMeterClient("memory", transport=transport, timeout=0.05)
    async with client:
        clock = await client.read_clock()
        assert clock.utc == NOW and clock.deviation is None and client.deviation == -120
        assert clock.status == 0x80 and clock.trustworthy  # daylight saving bit only
        rows = await client.read_load_profile(start_utc=NOW - 3600, end_utc=NOW)
        assert [r.timestamp for r in rows] == [START + 86400 - 2700 + i * 900 for i in range(4)]
    assert not transport.opened


async def test_float_register_is_refused_not_rounded() -> None:
    class FloatMeter(EmulatedDlmsMeter):
        def get(
            self, descriptor: AttributeDescriptor, access: AccessSelection | None, now: int
        ) -> GetResult:
            if descriptor.attribute == 2 and descriptor.class_id == 3:
                return Data(Tag.FLOAT32, 1234.5)
            return super().get(descriptor, access, now)

    server = ServerConnection(default_settings(), FloatMeter(start=START))
    async with DlmsMeterClient("memory", transport=MemoryTransport(server), timeout=0.05) as client:
        with pytest.raises(CosemValueError):
            await client.read_register("1-0:1.8.0.255")


async def test_requests_after_close_reconnect() -> None:
    server = ServerConnection(default_settings(), EmulatedDlmsMeter(start=START))
    transport = MemoryTransport(server)
    client = DlmsMeterClient("memory", transport=transport, timeout=0.05)
    await client.connect()
    await client.close()
    assert not server.connected
    assert await client.read_serial() == "MC20260001"  # reconnects by itself
    await client.close()
    with pytest.raises(LinkError):
        client.connection.get(AttributeDescriptor(1, CLOCK_OBIS, 2))
