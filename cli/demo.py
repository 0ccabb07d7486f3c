"""``meterchain demo``: the whole pipe on one machine, with nothing to set up.

A broker (Mosquitto on a free loopback port where installed, the embedded amqtt broker
otherwise), the backend (ingest, sealer, API), emulated SDM630 meters on pseudo-terminals and one
gateway agent per meter, each with its own key and config file, all under one work directory.
Everything runs in this process; Ctrl-C stops it cleanly. The agents read their meters through
the same code path a real gateway uses: a TOML config, a serial port, the Modbus reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from meterchain.agent.config import load_config
from meterchain.agent.service import Agent
from meterchain.mqtt.broker import RunningBroker, free_port, start_broker
from meterchain.backend.config import BackendConfig
from meterchain.backend.devices import registry
from meterchain.backend.service import serve
from meterchain.backend.store import open_store
from meterchain.bridge.modbus import LoadProfile, ModbusMeterEmulator, accelerated_clock
from meterchain.contract import signing
from meterchain.contract.note import NoteSigner
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
log = logging.getLogger(__name__)

DEMO_ORIGIN = "demo.meterchain.local/log"
DEMO_UTILITY, DEMO_COMMUNITY = "demo-utility", "demo-community"
#: The emulated meters' serial numbers: gateway gw-000i reads meter 21000000 + i.
SERIAL_BASE = 21_000_000


@dataclass
class DemoGateway:
    device: str
    config_path: Path
    emulator: ModbusMeterEmulator
    pty: str


def _port_or_free(preferred: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _write_key(path: Path) -> bytes:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(signing.generate_private_key_pem())
    return signing.load_signer(path.read_bytes()).public_key_der


def _agent_config(workdir: Path, device: str, pty: str, broker: RunningBroker, api: str, interval: int) -> Path:
    path = workdir / f"{device}.toml"
    auth = ""
    if broker.username:
        auth = f'username = "{broker.username}"\npassword = "{broker.password}"\n'
    path.write_text(
        f'device_id = "{device}"\n'
        f'key_path = "{device}.key"\n'
        f'backend_url = "{api}"\n'
        f'outbox_path = "{device}-outbox.sqlite"\n'
        f"interval_seconds = {interval}\n"
        f"ack_timeout_seconds = {max(2 * interval, 5)}\n\n"
        f"[broker]\n"
        f'url = "mqtt://{broker.host}:{broker.port}"\n'
        f"{auth}\n"
        f"[[meters]]\n"
        f'name = "house"\n'
        f'model = "sdm630"\n'
        f'port = "{pty}"\n'
        f"baudrate = 9600\n"
        f"modbus_id = 1\n"
    )
    return path


def _read_logins(path: Path) -> dict[str, str]:
    """username -> password from households.txt ("username password household" per line)."""
    if not path.exists():
        return {}
    return {parts[0]: parts[1] for line in path.read_text().splitlines()
            if len(parts := line.split()) >= 2 and not line.startswith("#")}


async def _households(db: str, devices: list[str], logins_file: Path) -> dict[str, str]:
    """A utility, a community and one household per gateway: metering point mp-i bound to the
    gateway's meter serial from time 0, occupied by household-i, with a login household-i (set
    through the real invitation link). Re-running keeps what exists; passwords live in
    ``logins_file`` (mode 0600). Returns username -> password."""
    from meterchain.backend.access.model import BindingOverlap, PartyExists, PointKind
    from meterchain.backend.access.tables import PartyTables
    from meterchain.backend.web import accounts
    from meterchain.backend.web.tables import WebTables

    passwords = _read_logins(logins_file)
    store = await open_store(db)
    try:
        parties, web, now = PartyTables(store), WebTables(store), int(time.time())
        steps = [lambda: parties.add_utility(DEMO_UTILITY, "Demo utility", now),
                 lambda: parties.add_community(DEMO_COMMUNITY, DEMO_UTILITY, "Demo street", now)]
        for i, device in enumerate(devices, start=1):
            household, point = f"household-{i}", f"mp-{i}"
            steps += [
                lambda h=household: parties.add_household(h, DEMO_COMMUNITY, h.replace("-", " "), now),
                lambda p=point: parties.add_metering_point(p, DEMO_UTILITY, DEMO_COMMUNITY,
                                                           PointKind.CONSUMPTION, now),
                lambda p=point, d=device, i=i: parties.bind_meter(p, d, str(SERIAL_BASE + i), 0, None, now),
                lambda p=point, h=household: parties.add_occupancy(p, h, 0, None, now),
            ]
        for step in steps:
            with contextlib.suppress(PartyExists, BindingOverlap):  # a re-run with the same --dir
                await step()
        for i in range(1, len(devices) + 1):
            username = household = f"household-{i}"
            if await web.login(username) is not None and username in passwords:
                continue
            password = passwords.get(username) or secrets.token_urlsafe(12)
            hashed = await asyncio.to_thread(accounts.hash_password, password)
            if await web.login(username) is None:
                link, _ = await web.create_link("invite", household, None, now)
                await web.accept_invite(link, username, hashed, now)
            else:  # the login exists but its password was lost: set a new one
                await web.set_password_hash(username, hashed, now)
            passwords[username] = password
    finally:
        await store.close()
    fd = os.open(logins_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# demo dashboard logins: username password household\n")
        for username, password in sorted(passwords.items()):
            handle.write(f"{username} {password} {username}\n")
    logins_file.chmod(0o600)
    return passwords


async def _status(db: str, devices: list[str], stop: asyncio.Event, every: float) -> None:
    """Print one line whenever the log grows: tree size and each gateway's acknowledged sequence."""
    store = await open_store(db)
    last_size = -1
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            checkpoint = await store.latest_checkpoint()
            size = checkpoint.size if checkpoint else 0
            if size != last_size:
                acks = []
                for device in devices:
                    state = await store.ack_state(device)
                    acks.append(f"{device} ✓{state.upto}")
                console.print(
                    f"[dim]{time.strftime('%H:%M:%S')}[/dim] log size [bold]{size}[/bold]  "
                    + "  ".join(acks)
                )
                last_size = size
    finally:
        await store.close()


async def run_demo(workdir: Path, meters: int, interval: int, http_port: int, duration: float | None) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    broker = await start_broker(workdir=workdir / "broker")
    console.print(f"broker      [bold]{broker.kind}[/bold] on {broker.host}:{broker.port}")
    token_file = workdir / "admin-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24) + "\n")
        token_file.chmod(0o600)
    token = token_file.read_text().strip()
    port = _port_or_free(http_port)
    api = f"http://127.0.0.1:{port}"
    config = BackendConfig(
        db=str(workdir / "backend.sqlite"),
        broker=broker.url,
        http_port=port,
        log_key=str(workdir / "log.key"),
        origin=DEMO_ORIGIN,
        admin_token=token,
        seal_interval=max(1.0, interval / 2),
    )

    devices = [f"gw-{i:04d}" for i in range(1, meters + 1)]
    store = await open_store(config.db)
    try:
        enrolled = {d for d, _ in await store.devices()}
        for device in devices:
            public = _write_key(workdir / f"{device}.key")
            if device not in enrolled:
                await registry.enrol(store, device, public, int(time.time()))
    finally:
        await store.close()
    logins_file = workdir / "households.txt"
    passwords = await _households(config.db, devices, logins_file)

    # One simulated quarter-hour of household load and PV per real interval.
    scale = 900 / interval
    gateways: list[DemoGateway] = []
    for i, device in enumerate(devices, start=1):
        emulator = ModbusMeterEmulator(
            "sdm630", 1, 9600, serial_number=SERIAL_BASE + i,
            profile=LoadProfile(seed=i, pv_peak_w=0 if i % 3 == 0 else 4500),
            clock=accelerated_clock(scale),
        )
        pty = await emulator.start()
        config_path = _agent_config(workdir, device, pty, broker, api, interval)
        gateways.append(DemoGateway(device, config_path, emulator, pty))

    backend_ready = asyncio.Event()
    backend = asyncio.create_task(serve(config, stop=stop, ready=backend_ready), name="backend")
    done, _ = await asyncio.wait({backend, asyncio.create_task(backend_ready.wait())},
                                 return_when=asyncio.FIRST_COMPLETED)
    if backend in done:
        backend.result()  # raise what stopped it
    agents = [asyncio.create_task(Agent(load_config(g.config_path)).run(), name=g.device) for g in gateways]
    status = asyncio.create_task(_status(config.db, devices, stop, every=max(1.0, interval / 2)))

    log_pub = workdir / "log.pub"
    log_pub.write_text(str(NoteSigner.parse((workdir / "log.key").read_text()).verifier) + "\n")
    console.print(f"backend     API {api}/api/v1   docs [bold]{api}/docs[/bold]   metrics {api}/metrics")
    console.print(f"            admin token in {token_file}   log public key in {log_pub}")
    for g in gateways:
        console.print(f"gateway     {g.device}: config {g.config_path}, SDM630 emulated on {g.pty}")
    console.print(
        f"every {interval} s each agent signs a reading; the backend verifies, stores and seals it.\n"
        f"fetch and verify a proof:\n"
        f"  curl -s -H \"Authorization: Bearer $(cat {token_file})\" "
        f"{api}/api/v1/devices/{devices[0]}/readings/1/bundle > reading.tlog-proof\n"
        f"  meterchain verify reading.tlog-proof --log-key {log_pub}\n"
        "Ctrl-C stops everything."
    )
    console.print(f"[bold]dashboard: {api}/  sign in as household-1 / {passwords['household-1']}[/bold]"
                  f"\n            (every household's login in {logins_file})")
    try:
        if duration is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration)
            stop.set()
        else:
            await stop.wait()
    finally:
        stop.set()
        for task in agents:
            task.cancel()
        await asyncio.gather(*agents, return_exceptions=True)
        with contextlib.suppress(Exception):
            await backend
        await asyncio.gather(status, return_exceptions=True)
        for g in gateways:
            await g.emulator.stop()
        await broker.stop()
        console.print("demo stopped; data kept in", workdir)


def demo(
    workdir: Path = typer.Option(Path("demo-data"), "--dir", help="Where keys, configs and databases go."),
    meters: int = typer.Option(3, "--meters", min=1, max=50, help="How many emulated meters (one gateway each)."),
    interval: int = typer.Option(10, "--interval", min=2, max=900, help="Seconds per reading interval."),
    http_port: int = typer.Option(8000, "--http-port", help="API port (a free one is used if taken)."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds."),
) -> None:
    """Run broker, backend, emulated meters and their gateway agents; print the URLs."""
    if 86_400 % interval:
        raise typer.BadParameter(f"--interval {interval} must divide a day (86400 s)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    asyncio.run(run_demo(workdir.resolve(), meters, interval, http_port, duration))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
