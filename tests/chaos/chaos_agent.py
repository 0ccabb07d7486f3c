"""The agent process the chaos suite kills: the real agent, on a clock the test can jump.

Usage: python chaos_agent.py CONFIG CLOCK_OFFSET_FILE
The clock is the system's plus the seconds in CLOCK_OFFSET_FILE (re-read every 0.1 s); its
monotonic time is the system's, so the agent's clock judge sees each jump as a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from meterchain.agent.config import load_config
from meterchain.agent.service import Agent
from meterchain.mqtt import Backoff


class JumpClock:
    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.read_at = path, 0.0, 0.0

    def now(self) -> float:
        if time.monotonic() - self.read_at > 0.1:
            self.read_at = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                self.offset = float(self.path.read_text() or 0)
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        while (remaining := deadline - self.now()) > 0:
            await asyncio.sleep(min(remaining, 0.2))


def _dump_tasks() -> None:
    """SIGUSR1: every task's stack to stderr (the test asks when an agent stalls)."""
    print(f"--- tasks at {time.time():.1f}", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def main(config: str, offset_file: str) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    agent = Agent(load_config(Path(config)), clock=JumpClock(Path(offset_file)),
                  backoff=Backoff(initial=0.1, maximum=0.5), status_interval=5)
    await agent.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(created).3f %(message)s")
    logging.getLogger("meterchain.agent").setLevel(logging.INFO)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
