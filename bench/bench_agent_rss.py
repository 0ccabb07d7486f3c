"""Resident memory of ``meterchain agent run`` with 10 emulated SDM630 meters, lean vs whole CLI.

One Mosquitto on loopback and one emulated Modbus bus (10 meters, ids 1-10, on one pty) in this
process; the agent polls them every ``--interval`` s and publishes signed readings (no backend: its
outbox keeps them). Two agent processes run one after the other on the same bus and broker:

- ``lean``: ``meterchain agent run`` as installed (cli/main.py builds only the agent's commands);
- ``whole CLI``: the same command through the app with every part's commands (as before issue 20:
  the backend's FastAPI, pydantic, numpy imported into the agent).

VmRSS is sampled from /proc every 0.25 s; VmHWM is the kernel's peak.

    .venv/bin/python bench/bench_agent_rss.py --seconds 25
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
WHOLE = "import sys; from meterchain.cli.main import app; sys.argv[0] = 'meterchain'; app()"


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def run_agent(label: str, argv: list[str], seconds: float, cwd: Path) -> dict[str, object]:
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[int] = []
    hwm = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        await asyncio.sleep(0.25)
        try:
            samples.append(status_kb(proc.pid, "VmRSS"))
            hwm = max(hwm, status_kb(proc.pid, "VmHWM"))
        except (FileNotFoundError, ProcessLookupError):
            break
    failed = proc.poll()
    proc.terminate()
    _, err = await asyncio.to_thread(proc.communicate)
    if failed is not None:
        raise SystemExit(f"{label}: the agent exited ({failed}): {err.decode()[-2000:]}")
    outbox = next(cwd.glob(f"{argv[-1].rsplit('/', 1)[-1].split('.')[0]}-outbox.sqlite"), None)
    rows = 0
    if outbox is not None:  # how many signed readings the agent kept: proof that it polled
        with sqlite3.connect(outbox) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            rows = max((db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables), default=0)
    return {"config": label, "outbox_rows": rows, "rss_end_mb": samples[-1] / 1024, "rss_max_mb": max(samples) / 1024,
            "hwm_mb": hwm / 1024}


async def main_async(seconds: float, meters: int, interval: int) -> dict[str, object]:
    from meterchain.bridge.modbus import EmulatedMeter, ModbusBusEmulator
    from meterchain.contract.signing import generate_private_key_pem
    from meterchain.mqtt.broker import find_mosquitto, start_mosquitto

    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("this bench needs Mosquitto")
    with tempfile.TemporaryDirectory(prefix="mc-bench-agent-") as tmp:
        work = Path(tmp)
        broker = await start_mosquitto(binary, workdir=work / "broker")
        bus = ModbusBusEmulator([EmulatedMeter("sdm630", i + 1, 9600, 21_000_000 + i)
                                 for i in range(meters)])
        pty = await bus.start()
        for slug in ("lean", "whole"):  # a key each: its sequence reservation names its device
            (work / f"{slug}.key").write_bytes(generate_private_key_pem())
            (work / f"{slug}.key").chmod(0o600)
        meter_tables = "".join(
            f'\n[[meters]]\nname = "m{i + 1}"\nmodel = "sdm630"\nport = "{pty}"\n'
            f"baudrate = 9600\nmodbus_id = {i + 1}\n" for i in range(meters))
        results = []
        load_start = os.getloadavg()
        try:
            for label, argv in (("lean (meterchain agent run)", [str(VENV_BIN / "meterchain")]),
                                ("whole CLI (as before)", [sys.executable, "-c", WHOLE])):
                slug = "lean" if label.startswith("lean") else "whole"
                config = work / f"{slug}.toml"
                config.write_text(
                    f'device_id = "gw-bench{slug}"\nkey_path = "{slug}.key"\n'
                    f'backend_url = "http://127.0.0.1:9"\noutbox_path = "{slug}-outbox.sqlite"\n'
                    f"interval_seconds = {interval}\n\n[broker]\n"
                    f'url = "mqtt://{broker.host}:{broker.port}"\n{meter_tables}')
                config.chmod(0o600)
                results.append(await run_agent(
                    label, [*argv, "agent", "run", "--config", str(config)], seconds, work))
        finally:
            await bus.stop()
            await broker.stop()
    return {"meters": meters, "seconds": seconds, "interval_s": interval, "results": results,
            "load_start": load_start, "load_end": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="how long each agent runs")
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--interval", type=int, default=5, help="the agent's interval_seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async(args.seconds, args.meters, args.interval))
    if args.json:
        print(json.dumps(result))
        return
    load = result["load_start"], result["load_end"]
    print(f"load average {load[0][0]:.2f} -> {load[1][0]:.2f}")  # type: ignore[index]
    print(f"| agent, {args.meters} emulated meters, {args.seconds:.0f} s | VmRSS at end | VmRSS max | VmHWM "
          "| rows in its outbox (largest table) |")
    print("|---|---:|---:|---:|---:|")
    for r in result["results"]:  # type: ignore[attr-defined]
        print(f"| {r['config']} | {r['rss_end_mb']:.1f} MB | {r['rss_max_mb']:.1f} MB "
              f"| {r['hwm_mb']:.1f} MB | {r['outbox_rows']} |")


if __name__ == "__main__":
    main()
