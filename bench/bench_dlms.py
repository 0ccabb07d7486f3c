"""DLMS/COSEM: frames decoded per second, profile decoding, and GETs per second over a pty.

Baseline in the same run: gurux-dlms (GPL, test/bench-only peer; skipped if not installed) decoding
the same A-XDR profile buffer, and its client doing the same GETs against the same emulator over
the same kind of pty. Run:

    .venv/bin/python bench/bench_dlms.py [--seconds 2] [--gets 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable

import serial
from meterchain.bridge.dlms.apdu import (
    AttributeDescriptor,
    GetResponseNormal,
    GetResponseWithDataBlock,
    decode_apdu,
    encode_apdu,
)
from meterchain.bridge.dlms.axdr import decode_data, encode_data
from meterchain.bridge.dlms.cosem import ClassId, decode_profile_buffer
from meterchain.bridge.dlms.emulator import (
    ACTIVE_IMPORT_OBIS,
    DlmsMeterEmulator,
    EmulatedDlmsMeter,
)
from meterchain.bridge.dlms.hdlc import (
    LLC_RESPONSE,
    Control,
    FrameReader,
    FrameType,
    HdlcAddress,
    HdlcFrame,
    decode_frame,
    encode_frame,
    strip_llc,
)
from meterchain.bridge.dlms.obis import Obis

START = 1_767_225_600
NOW = START + 2 * 86400


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``, best of three slices of ``seconds / 3``."""
    best = 0.0
    for _ in range(3):
        count, began = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds / 3:
            for _ in range(50):
                fn()
            count += 50
        best = max(best, count / elapsed)
    return best


def frames_for_bench() -> tuple[bytes, bytes]:
    """A GET-Response-Normal frame and a full 128-byte segment of a block-transfer response."""
    small = encode_frame(
        HdlcFrame(
            HdlcAddress(16), HdlcAddress(1), Control(FrameType.I, True, 1, 2),
            LLC_RESPONSE + bytes.fromhex("c401c100060001e240"),
        )
    )
    block = encode_apdu(GetResponseWithDataBlock(0xC1, False, 1, bytes(200)))
    segment = encode_frame(
        HdlcFrame(
            HdlcAddress(16), HdlcAddress(1), Control(FrameType.I, True, 3, 4),
            (LLC_RESPONSE + block)[:128], segmented=True,
        )
    )
    return small, segment


def decode_small(frame: bytes) -> object:
    apdu = decode_apdu(strip_llc(decode_frame(frame).info, LLC_RESPONSE))
    assert isinstance(apdu, GetResponseNormal)
    return apdu.result


def bench_codec(seconds: float) -> None:
    small, segment = frames_for_bench()
    print(f"decode_frame + APDU, GET response ({len(small)} B): {rate(lambda: decode_small(small), seconds):,.0f}/s")
    segment_rate = rate(lambda: decode_frame(segment), seconds)
    print(f"decode_frame, segment with 128-byte info ({len(segment)} B): {segment_rate:,.0f}/s")
    stream = small * 100

    def read_stream() -> None:
        reader = FrameReader()
        reader.feed(stream)
        assert len(reader.frames()) == 100

    print(f"FrameReader on a stream: {rate(read_stream, seconds) * 100:,.0f} frames/s")

    meter = EmulatedDlmsMeter(start=START)
    descriptor = AttributeDescriptor(ClassId.PROFILE_GENERIC, Obis.parse("1-0:99.1.0.255"), 2)
    buffer = meter.get(descriptor, None, START + 96 * 900 - 1)  # one day: 96 entries
    raw = encode_data(buffer)  # type: ignore[arg-type]
    scalers = {ACTIVE_IMPORT_OBIS: (0, 30), Obis.parse("1-0:1.29.0.255"): (0, 30)}

    def ours() -> None:
        value, _ = decode_data(raw)
        decode_profile_buffer(value, meter.capture_objects, 900, scalers, -60)

    ours_rate = rate(ours, seconds)
    axdr_rate = rate(lambda: decode_data(raw), seconds)
    print(f"profile day ({len(raw)} B, 96 entries): A-XDR {axdr_rate * 96:,.0f} entries/s; "
          f"with UTC stamps and exact scaling {ours_rate * 96:,.0f} entries/s")
    try:
        from gurux_dlms import GXByteBuffer, GXDLMSSettings
        from gurux_dlms.internal._GXCommon import _GXCommon
        from gurux_dlms.internal._GXDataInfo import _GXDataInfo
    except ImportError:
        print("gurux-dlms not installed: no baseline")
        return
    settings = GXDLMSSettings(True, None)
    gurux_rate = rate(lambda: _GXCommon.getData(settings, GXByteBuffer(raw), _GXDataInfo()), seconds)
    print(f"  gurux-dlms getData on the same bytes: {gurux_rate * 96:,.0f} entries/s; "
          f"ours A-XDR / gurux = {axdr_rate / gurux_rate:.2f}")


async def bench_ours_over_pty(gets: int) -> float:
    from meterchain.bridge.dlms.serial_client import DlmsMeterClient

    async with DlmsMeterEmulator(EmulatedDlmsMeter(start=START), clock=lambda: NOW) as emulator:
        assert emulator.path is not None
        async with DlmsMeterClient(emulator.path, 9600, timeout=2.0) as meter:
            await meter.get(ClassId.REGISTER, ACTIVE_IMPORT_OBIS, 2)
            began = time.perf_counter()
            for _ in range(gets):
                await meter.get(ClassId.REGISTER, ACTIVE_IMPORT_OBIS, 2)
            return gets / (time.perf_counter() - began)


async def bench_gurux_over_pty(gets: int) -> float | None:
    try:
        from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
        from gurux_dlms.enums import Authentication, InterfaceType
        from gurux_dlms.objects import GXDLMSRegister
    except ImportError:
        return None
    async with DlmsMeterEmulator(EmulatedDlmsMeter(start=START), clock=lambda: NOW) as emulator:
        assert emulator.path is not None
        port = serial.Serial(emulator.path, 9600, timeout=0)
        loop = asyncio.get_running_loop()
        client = GXDLMSClient(True, 16, 1, Authentication.NONE, None, InterfaceType.HDLC)

        async def send(frame: bytes) -> GXReplyData:
            """The same waiting scheme our client uses: the loop wakes us when the pty is readable."""
            port.write(frame)
            reply, buffer = GXReplyData(), GXByteBuffer()
            while True:
                ready = asyncio.Event()
                loop.add_reader(port.fileno(), ready.set)
                try:
                    await asyncio.wait_for(ready.wait(), 2.0)
                finally:
                    loop.remove_reader(port.fileno())
                buffer.set(port.read(4096))
                if client.getData(buffer, reply, GXReplyData()) and reply.isComplete():
                    return reply

        client.parseUAResponse((await send(bytes(client.snrmRequest()))).data)
        client.parseAareResponse((await send(bytes(client.aarqRequest()[0]))).data)
        register = GXDLMSRegister("1.0.1.8.0.255")
        await send(bytes(client.read(register, 2)[0]))
        began = time.perf_counter()
        for _ in range(gets):
            await send(bytes(client.read(register, 2)[0]))
        elapsed = time.perf_counter() - began
        port.close()
        return gets / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="time per codec measurement")
    parser.add_argument("--gets", type=int, default=500, help="GETs per client over the pty")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    bench_codec(args.seconds)
    ours = asyncio.run(bench_ours_over_pty(args.gets))
    print(f"GET 1-0:1.8.0.255 over a pty, DlmsMeterClient: {ours:,.0f}/s")
    gurux = asyncio.run(bench_gurux_over_pty(args.gets))
    if gurux is not None:
        print(f"  gurux-dlms client, same emulator and waiting scheme: {gurux:,.0f}/s; "
              f"ours / gurux = {ours / gurux:.2f}")


if __name__ == "__main__":
    main()
