"""One 76-register block read vs the same values as separate reads, over a pty at a real baud rate.

The emulator sends each answer after its wire time at the configured speed (10 bits a character,
RTU gaps), so the ratio is what a real RS-485 bus would show. Run:

    .venv/bin/python bench/bench_modbus.py [--baud 9600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from meterchain.bridge.modbus.emulator import ModbusMeterEmulator
from meterchain.bridge.modbus.reader import ModbusMeterReader
from meterchain.bridge.modbus.registers import (
    ENERGY_BLOCK_COUNT,
    ENERGY_BLOCK_START,
    SDM630,
    Table,
)


async def run(baud: int, rounds: int) -> None:
    in_block = SDM630.in_range(Table.INPUT, ENERGY_BLOCK_START, ENERGY_BLOCK_COUNT)
    async with ModbusMeterEmulator("sdm630", 1, baud) as emu, ModbusMeterReader(emu.path, baud, timeout=3.0) as reader:
        block_s, separate_s = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            await reader.read_registers(1, Table.INPUT, ENERGY_BLOCK_START, ENERGY_BLOCK_COUNT)
            block_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            for reg in in_block:
                await reader.read_registers(1, reg.table, reg.address, reg.words)
            separate_s.append(time.perf_counter() - began)
    block, separate = min(block_s), min(separate_s)
    print(f"baud {baud}: block read of {ENERGY_BLOCK_COUNT} registers {block * 1000:.0f} ms; "
          f"{len(in_block)} separate reads {separate * 1000:.0f} ms; "
          f"ratio separate/block {separate / block:.1f}x (best of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.baud, args.rounds))


if __name__ == "__main__":
    main()
