"""``meterchain emulate modbus --meters N``: several meters on one pty, read by a real agent."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from meterchain.agent.cli import write_private_key
from meterchain.agent.config import load_config
from meterchain.agent.service import Agent
from meterchain.bridge.cli import app
from meterchain.contract.message import parse_message
from meterchain.contract.signing import generate_private_key_pem
from meterchain.mqtt.broker import free_port
from typer.testing import CliRunner

from tests.support.agent import FAST_BACKOFF, running, wait_until

BAUD = 38400


def test_the_help_names_the_option() -> None:
    result = CliRunner().invoke(app, ["modbus", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--meters" in result.output


def test_ids_beyond_247_are_refused() -> None:
    result = CliRunner().invoke(app, ["modbus", "--id", "240", "--meters", "9"])
    assert result.exit_code == 2 and "247" in result.output


async def test_an_agent_reads_three_meters_of_one_emulated_bus(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("meterchain")
    proc = subprocess.Popen(
        [str(exe), "emulate", "modbus", "--meters", "3", "--id", "4", "--baud", str(BAUD),
         "--serial", "700100", "--seed", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [await asyncio.to_thread(proc.stdout.readline) for _ in range(4)]
        path = lines[0].strip()
        assert path.startswith("/dev/pts/")
        assert [[w[0], w[1], w[4]] for w in (line.split() for line in lines[1:])] == [
            ["id", "4", "700100"], ["id", "5", "700101"], ["id", "6", "700102"]]
        write_private_key(tmp_path / "device.key", generate_private_key_pem(), force=False)
        meters = "".join(f'\n[[meters]]\nname = "m{unit}"\nmodel = "sdm630"\nport = "{path}"\n'
                         f"baudrate = {BAUD}\nmodbus_id = {unit}\n" for unit in (4, 5, 6))
        (tmp_path / "agent.toml").write_text(
            'device_id = "gw-emulate"\nkey_path = "device.key"\nbackend_url = "http://127.0.0.1:9"\n'
            'outbox_path = "outbox.sqlite"\ninterval_seconds = 1\n\n[broker]\n'
            f'url = "mqtt://127.0.0.1:{free_port()}"\n{meters}')
        agent = Agent(load_config(tmp_path / "agent.toml"), backoff=FAST_BACKOFF)
        async with running(agent.run):
            await wait_until(lambda: agent.metrics.readings_signed._value.get() >= 3, 30,
                             "a cycle of three readings")
            assert agent.outbox is not None
            stored = await agent.outbox.readings()
        serials = {parse_message(r.message).reading.meter for r in stored}
        assert serials == {"700100", "700101", "700102"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 10) == 0
