"""``meterchain demo``: the whole pipe on one machine, with nothing to set up, and a month of history.

A broker (Mosquitto on a free loopback port where installed, the embedded amqtt broker
otherwise), the backend (ingest, sealer, API), emulated SDM630 meters on pseudo-terminals and one
gateway agent per household, each with its own key and config file, all under one work directory.
Everything runs in this process; Ctrl-C stops it cleanly. The agents read their meters through
the same code path a real gateway uses: a TOML config, a serial port, the Modbus reader.

History is made by time-lapse (docs/decisions.md, "The demo's history"): on first start the
meters and agents run on a :class:`TimeLapseClock` that begins ``--history-days`` ago; a driver
moves it one 15-minute interval at a time, as soon as every agent has signed the interval and its
outbox is not too far ahead of the backend's acks, until it reaches the present. Then the agents
restart on the system clock and run live (a reading per quarter hour, telemetry every 5 s).
No reading is dated after the moment it was signed, and nothing is written to the database
except by the backend's own ingest. A re-run catches up the time the demo was stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from meterchain.agent.clock import TimeLapseClock
from meterchain.agent.config import load_config
from meterchain.agent.receipts import read_view
from meterchain.agent.service import Agent
from meterchain.backend.access.model import BindingOverlap, PartyExists, PointKind
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.ports import PortTaken, check_port_free
from meterchain.backend.config import BackendConfig
from meterchain.backend.devices import registry
from meterchain.backend.service import load_or_create_log_key
from meterchain.backend.store import open_sqlite, open_store
from meterchain.backend.web import accounts
from meterchain.backend.web.tables import WebTables
from meterchain.bridge.modbus import EmulatedMeter, LoadProfile, ModbusBusEmulator
from meterchain.cli import demo_consortium as consortium
from meterchain.contract import signing
from meterchain.contract.cosignature import verify_cosignatures
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteSigner
from meterchain.contract.tlog_policy import WitnessPolicy
from meterchain.mqtt.broker import RunningBroker, start_broker
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(highlight=False, soft_wrap=True)
log = logging.getLogger(__name__)

DEMO_ORIGIN = "demo.meterchain.local/log"
DEMO_UTILITY = "demo-utility"
#: The demo's two communities: one nets pro rata, the other by call auctions.
PRORATA_COMMUNITY, AUCTION_COMMUNITY = "sonnenweg", "lindenhof"
INTERVAL = 900  # the dashboard's and the settlement's grid
TELEMETRY_SECONDS = 5
DEFAULT_HISTORY_DAYS = 35
#: How many readings an agent may have signed beyond the backend's acks while catching up.
CATCH_UP_WINDOW = 96
#: House meters are 21000000 + household number, second meters (heat pump, EV) 22000000 + it.
SERIAL_BASE, SECOND_SERIAL_BASE = 21_000_000, 22_000_000
EXTRA_SERIAL = 23_000_001  # the installer's meter


@dataclass(frozen=True)
class DemoMeter:
    """One emulated meter of a household, and the metering point it is bound to."""

    name: str  # the agent's [[meters]] name
    point: str
    kind: PointKind
    modbus_id: int
    serial: int
    profile: LoadProfile


@dataclass(frozen=True)
class DemoHousehold:
    """A household of one kind, its community, and its gateway's meters on one bus."""

    number: int
    kind: str
    community: str
    meters: tuple[DemoMeter, ...]

    @property
    def id(self) -> str:
        return f"household-{self.number}"

    @property
    def device(self) -> str:
        return f"gw-{self.number:04d}"


def _house(n: int, pv_peak_w: int) -> DemoMeter:
    return DemoMeter("house", f"mp-{n}", PointKind.CONSUMPTION, 1, SERIAL_BASE + n,
                     LoadProfile(seed=n, pv_peak_w=pv_peak_w))


HOUSEHOLDS: tuple[DemoHousehold, ...] = (
    DemoHousehold(1, "consumption only", PRORATA_COMMUNITY, (_house(1, 0),)),
    DemoHousehold(2, "PV", PRORATA_COMMUNITY, (_house(2, 6000),)),
    DemoHousehold(3, "heat pump", PRORATA_COMMUNITY, (
        _house(3, 0),
        DemoMeter("heat-pump", "mp-3-hp", PointKind.HEAT_PUMP, 2, SECOND_SERIAL_BASE + 3,
                  LoadProfile(seed=33, base_load_w=30, peak_load_w=0, pv_peak_w=0,
                              heat_pump_w=2400)),
    )),
    DemoHousehold(4, "PV and EV", AUCTION_COMMUNITY, (
        _house(4, 8000),
        DemoMeter("ev-charger", "mp-4-ev", PointKind.EV_CHARGER, 2, SECOND_SERIAL_BASE + 4,
                  LoadProfile(seed=44, base_load_w=5, peak_load_w=0, pv_peak_w=0,
                              ev_charge_w=11_000)),
    )),
    DemoHousehold(5, "consumption only", AUCTION_COMMUNITY, (_house(5, 0),)),
)


@dataclass
class DemoGateway:
    household: DemoHousehold
    config_path: Path
    bus: ModbusBusEmulator
    pty: str

    @property
    def device(self) -> str:
        return self.household.device


def _write_key(path: Path) -> bytes:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(signing.generate_private_key_pem())
    return signing.load_signer(path.read_bytes()).public_key_der


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (secrets: tokens, passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _agent_config(workdir: Path, household: DemoHousehold, pty: str, broker: RunningBroker,
                  api: str, control_key: str = "", log_key: str = "", witness_policy: str = "") -> Path:
    """The gateway's TOML config, as provisioning would write it (docs/agent.md), with the
    backend's control key once the backend has made one (it verifies the acks), the log key and
    the witness policy's text (it verifies the receipts: the log's signature and the quorum)."""
    device = household.device
    path = workdir / f"{device}.toml"
    auth = ""
    if broker.username:
        auth = f'username = "{broker.username}"\npassword = "{broker.password}"\n'
    meters = "".join(
        f"\n[[meters]]\n"
        f'name = "{m.name}"\n'
        f'model = "sdm630"\n'
        f'port = "{pty}"\n'
        f"baudrate = 9600\n"
        f"modbus_id = {m.modbus_id}\n"
        for m in household.meters
    )
    _write_private(path,
                   f'device_id = "{device}"\n'
                   f'key_path = "{device}.key"\n'
                   f'backend_url = "{api}"\n'
                   f'outbox_path = "{device}-outbox.sqlite"\n'
                   f"interval_seconds = {INTERVAL}\n"
                   f"ack_timeout_seconds = 30\n"
                   f"telemetry_seconds = {TELEMETRY_SECONDS}\n"
                   + (f'control_key = "{control_key}"\n' if control_key else "")
                   + (f'log_key = "{log_key}"\n' if log_key else "")
                   + (f"witness_policy = {json.dumps(witness_policy)}\n" if witness_policy else "") + "\n"
                   f"[broker]\n"
                   f'url = "mqtt://{broker.host}:{broker.port}"\n'
                   f"{auth}{meters}")
    return path


def _read_logins(path: Path) -> dict[str, str]:
    """username -> password from households.txt ("username password household" per line)."""
    if not path.exists():
        return {}
    return {parts[0]: parts[1] for line in path.read_text().splitlines()
            if len(parts := line.split()) >= 2 and not line.startswith("#")}


async def _households(db: str, households: tuple[DemoHousehold, ...], logins_file: Path,
                      since: int = 0) -> dict[str, str]:
    """A utility, two communities and the households: each meter bound to its metering point from
    ``since`` (the history's start), each point occupied by its household, each household with a
    login of its own name (set through the real invitation link). Re-running keeps what exists;
    passwords live in ``logins_file`` (mode 0600). Returns username -> password."""
    passwords = _read_logins(logins_file)
    store = await open_sqlite(db)  # the parties and logins are SQLite-only tables
    try:
        parties, web, now = PartyTables(store), WebTables(store), int(time.time())

        async def once(step: Awaitable[object]) -> None:
            with contextlib.suppress(PartyExists, BindingOverlap):  # a re-run with the same --dir
                await step

        await once(parties.add_utility(DEMO_UTILITY, "Demo utility", now))
        await once(parties.add_community(PRORATA_COMMUNITY, DEMO_UTILITY, "Sonnenweg", now))
        await once(parties.add_community(AUCTION_COMMUNITY, DEMO_UTILITY, "Lindenhof", now))
        for h in households:
            await once(parties.add_household(h.id, h.community,
                                             f"Household {h.number} ({h.kind})", now))
            for m in h.meters:
                await once(parties.add_metering_point(m.point, DEMO_UTILITY, h.community,
                                                      m.kind, now))
                await once(parties.bind_meter(m.point, h.device, str(m.serial), since, None, now))
                await once(parties.add_occupancy(m.point, h.id, since, None, now))
        for h in households:
            username = h.id
            if await web.login(username) is not None and username in passwords:
                continue
            password = passwords.get(username) or secrets.token_urlsafe(12)
            hashed = await asyncio.to_thread(accounts.hash_password, password)
            if await web.login(username) is None:
                link, _ = await web.create_link("invite", h.id, None, now)
                await web.accept_invite(link, username, hashed, now)
            else:  # the login exists but its password was lost: set a new one
                await web.set_password_hash(username, hashed, now)
            passwords[username] = password
    finally:
        await store.close()
    _write_private(logins_file, "# demo dashboard logins: username password household\n" + "".join(
        f"{username} {password} {username}\n" for username, password in sorted(passwords.items())))
    return passwords


#: The communities' netting terms (µ€/kWh, µ€, basis points): a German household tariff.
TERMS = {"interval_seconds": INTERVAL, "deadline_seconds": 3600, "timezone": "Europe/Berlin",
         "rule": "mid_market", "retail_price": 320_000, "feed_in_price": 82_000,
         "local_network_fee": 25_000, "grid_network_fee": 75_000, "platform_fee": 5_000,
         "monthly_fee": 5_000_000, "vat_basis_points": 1900, "co2_grams_per_kwh": 380}
#: Standing orders in the auction community: the PV seller asks, the buyers bid.
LISTINGS = ({"member": "mp-4", "sell_ask": 140_000, "green_source": True},
            {"member": "mp-4-ev", "buy_limit": 260_000},
            {"member": "mp-5", "buy_limit": 230_000, "green_only": True})


@dataclass(frozen=True)
class Credentials:
    """What the demo hands each kind of user besides the households' logins."""

    utility_key: str
    installer_token: str


def _admin_api(api: str, admin_token: str) -> Any:
    import httpx

    return httpx.AsyncClient(base_url=f"{api}/api/v1", timeout=30,
                             headers={"Authorization": f"Bearer {admin_token}"})


async def _call(client: Any, method: str, path: str, body: object = None) -> Any:
    response = await client.request(method, path, json=body)
    if response.status_code >= 400:
        raise BackendFailed(f"{method} {path}: {response.status_code} {response.text}")
    return response.json()


async def setup_settlement(api: str, admin_token: str, since: int, timeout: float = 300) -> int:
    """Netting terms for both communities from ``since`` (pro rata, and call auctions with
    standing listings), set through the API once the history is in, so the runner settles every
    past interval complete (terms set first would settle each at its deadline with members
    missing, then again as late readings arrive). Waits until the runner has settled up to the
    last hour; returns the settled intervals. Kept across re-runs."""
    async with _admin_api(api, admin_token) as client:
        for community, market in ((PRORATA_COMMUNITY, "prorata"), (AUCTION_COMMUNITY, "auction")):
            if not await _call(client, "GET", f"/communities/{community}/terms"):
                await _call(client, "PUT", f"/communities/{community}/terms",
                            {**TERMS, "valid_from": since, "market": market})
        if not await _call(client, "GET", f"/communities/{AUCTION_COMMUNITY}/listings"):
            for listing in LISTINGS:
                await _call(client, "POST", f"/communities/{AUCTION_COMMUNITY}/listings",
                            {**listing, "valid_from": since})
        deadline = time.monotonic() + timeout
        recent = int(time.time()) // INTERVAL * INTERVAL - 4 * INTERVAL
        communities = (PRORATA_COMMUNITY, AUCTION_COMMUNITY)
        while time.monotonic() < deadline:
            if all([await _call(client, "GET", f"/communities/{c}/intervals?start={recent}")
                    for c in communities]):
                break
            await asyncio.sleep(1)
        return min([len(await _call(client, "GET", f"/communities/{c}/intervals?start={since}"
                                    "&limit=10000")) for c in communities])


async def setup_operations(api: str, admin_token: str, workdir: Path,
                           extra_meter: str) -> Credentials:
    """What an operator hands out, through the API: a utility key (kept across re-runs) and a
    fresh installer token for the extra meter (it is usable once)."""
    async with _admin_api(api, admin_token) as client:
        key_file = workdir / "utility-key"
        if not key_file.exists():
            key = await _call(client, "POST", "/keys", {"kind": "utility", "subject": DEMO_UTILITY,
                                               "label": "demo utility"})
            _write_private(key_file, key["token"] + "\n")
        token = await _call(client, "POST", "/installer-tokens", {
            "scope": f"community:{PRORATA_COMMUNITY}", "note": "the demo's extra meter"})
        _write_private(workdir / "installer-token", token["token"] + "\n")
        invitation = await _call(client, "POST", "/console/invitations", {"role": "operator", "scope": "all"})
        _write_private(workdir / "console-invitation", invitation["url"] + "\n")  # one-time, fresh per run
    (workdir / "extra-meter").write_text(extra_meter + "\n")
    return Credentials(key_file.read_text().strip(), token["token"])


@dataclass
class Timeline:
    """Where the demo's emulated time begins (the meters' counters start there) and how far it
    has run (a re-run catches up from there): ``timeline.json`` in the work directory."""

    origin: int
    until: int

    @classmethod
    def load_or_start(cls, path: Path, history_days: int, now: float) -> Timeline:
        if path.exists():
            data = json.loads(path.read_text())
            return cls(int(data["origin"]), int(data["until"]))
        origin = (int(now) - history_days * 86_400) // INTERVAL * INTERVAL
        return cls(origin, origin)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"origin": self.origin, "until": self.until}) + "\n")


def _local(t: float) -> str:
    return dt.datetime.fromtimestamp(t).astimezone().strftime("%a %d %b %H:%M %Z")


async def _drive_catch_up(clock: TimeLapseClock, agents: list[tuple[Agent, asyncio.Task[None]]],
                          start: int, progress: Progress | None) -> int:
    """Advance ``clock`` interval by interval until the present; returns the intervals run.

    Each step waits until every agent has signed the interval (its poller completed a cycle) and
    has at most :data:`CATCH_UP_WINDOW` readings the backend has not acked: as fast as the pipe
    takes them, never ahead of it by more than a day.
    """
    for agent, task in agents:
        while not agent.started.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    total = max(1, (int(time.time()) - start) // INTERVAL)
    job = progress.add_task("history", total=total) if progress is not None else None
    steps, target = 0, start
    while True:
        target += INTERVAL
        for agent, task in agents:  # every poller asleep toward this boundary before the clock moves
            while (agent.poller.next_end or 0) < target:  # type: ignore[union-attr]
                if task.done():
                    task.result()
                await asyncio.sleep(0.002)
        # (a poller asleep toward a later boundary signs nothing at this one: not waited for)
        cycles = [agent.poller.cycles if agent.poller.next_end == target else None  # type: ignore[union-attr]
                  for agent, _ in agents]
        if not clock.advance_to(target):
            break
        for (agent, task), before in zip(agents, cycles, strict=True):
            while before is not None and agent.poller.cycles == before:  # type: ignore[union-attr]
                if task.done():
                    task.result()  # an agent that died: say why
                await asyncio.sleep(0.002)
            while await agent.outbox.depth() > CATCH_UP_WINDOW:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        steps += 1
        if progress is not None and job is not None:
            total = max(total, steps + (int(time.time()) - target) // INTERVAL)
            progress.update(job, completed=steps, total=total,
                            description=f"history {_local(target)}")
    return steps


async def _unless_stopped(work: Coroutine[Any, Any, int], stop: asyncio.Event) -> int | None:
    """``work``'s result, or None (``work`` cancelled) when Ctrl-C comes first."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _stopped(tasks: list[asyncio.Task[None]], timeout: float = 15.0) -> None:
    """Wait for cancelled agents, but not forever: the backend and broker must still stop."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        log.warning("demo: %s did not stop within %.0f s; stopping the rest anyway",
                    task.get_name(), timeout)


async def _drain(agents: list[tuple[Agent, asyncio.Task[None]]], timeout: float) -> None:
    """Wait until the backend has acked every reading the agents signed (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    for agent, _ in agents:
        while await agent.outbox.depth() > 0 and time.monotonic() < deadline:  # type: ignore[union-attr]
            await asyncio.sleep(0.1)


async def catch_up(gateways: list[DemoGateway], clock: TimeLapseClock, start: int,
                   show_progress: bool = True) -> int:
    """Run every gateway's agent on ``clock`` from ``start`` to the present; returns the number of
    intervals. The agents are the real ones; only their clock, telemetry (off) and the ack and
    status timings (virtual time moves a quarter hour per step) differ from the live run."""
    agents: list[tuple[Agent, asyncio.Task[None]]] = []
    for g in gateways:
        g.bus.wire_delay = False  # a 9600-baud line would take hours of real time
        config = dataclasses.replace(load_config(g.config_path), telemetry_seconds=0,
                                     ack_timeout_seconds=2 * 86_400)
        agent = Agent(config, clock=clock, status_interval=6 * 3600.0)
        agents.append((agent, asyncio.create_task(agent.run(), name=f"catch-up {g.device}")))
    try:
        if show_progress:
            columns = (TextColumn("{task.description}"), BarColumn(),
                       TextColumn("{task.completed}/{task.total} quarter hours"),
                       TimeRemainingColumn())
            with Progress(*columns, console=console, transient=False) as progress:
                steps = await _drive_catch_up(clock, agents, start, progress)
        else:
            steps = await _drive_catch_up(clock, agents, start, None)
        await _drain(agents, timeout=60)
    finally:
        for _, task in agents:
            task.cancel()
        await _stopped([task for _, task in agents])
        for g in gateways:
            g.bus.wire_delay = True
    return steps


async def _status(db: str, gateways: list[DemoGateway], stop: asyncio.Event, every: float,
                  timeline: Timeline, timeline_file: Path, policy: WitnessPolicy | None = None) -> None:
    """Print one line whenever the log grows: tree size, who cosigned its checkpoint (with a
    policy), and each gateway's acknowledged sequence and receipt; record how far the demo has run."""
    store = await open_store(db)
    last_size = -1
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            timeline.until = int(time.time()) // INTERVAL * INTERVAL
            timeline.save(timeline_file)
            checkpoint = await store.latest_checkpoint()
            size = checkpoint.size if checkpoint else 0
            if size != last_size:
                acks = []
                for g in gateways:
                    state = await store.ack_state(g.device)
                    acks.append(f"{g.device} ✓{state.upto}{_receipt(g)}")
                cosigned = _cosigned(checkpoint.note, policy) if checkpoint and policy else ""
                console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] log size [bold]{size}[/bold]"
                              f"{cosigned}  " + "  ".join(acks))
                last_size = size
    finally:
        await store.close()


def _cosigned(note: str, policy: WitnessPolicy) -> str:
    """" cosigned 2/3" (a quorum: plain) or, short of it, in red with what the policy needs."""
    try:
        signed = set(verify_cosignatures(note, policy.keys))
    except MeterchainError:  # a cosignature that does not verify: the note counts as none
        signed = set()
    count = f"{len(signed)}/{len(policy.witnesses)}"
    if policy.satisfied(signed):
        return f" cosigned {count}"
    return f" [bold red]cosigned {count} (policy: {policy.describe()})[/bold red]"


def _receipt(gateway: DemoGateway) -> str:
    """What the gateway holds as evidence: the newest checkpoint a receipt proved (or the alarm)."""
    kept = read_view(gateway.config_path.with_name(f"{gateway.device}-outbox.sqlite"))
    if kept is None:
        return ""
    held, alarm = kept
    if alarm is not None:
        return " [bold red]LOG INCONSISTENT[/bold red]"
    return f" receipt@{held.checkpoint.size}" if held is not None else ""


def _show(path: Path) -> str:
    """A path as the user typed it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def print_guide(api: str, workdir: Path, passwords: dict[str, str], credentials: Credentials,
                extra_meter: str, witnesses: list[consortium.DemoWitness] | None = None) -> None:
    """Where each kind of user goes and how they sign in (the README's sections follow it)."""
    d = _show(workdir)
    cli = ".venv/bin/meterchain"
    consortium_line = ""
    if witnesses:
        who = ", ".join(f"{w.name} {w.url} ({w.role})" for w in witnesses)
        policy = f"{d}/witnesses.policy"
        consortium_line = (
            f"\nconsortium  witnesses {who}; {consortium.QUORUM} of {len(witnesses)} must cosign "
            f"({policy}): {cli} verify BUNDLE --log-key {d}/log.pub --policy {policy}; "
            f"{cli} monitor {api} --log-key {d}/log.pub --policy {policy} --once; "
            f"stop one: kill $(cat {_show(witnesses[-1].pid_file)})")
    kinds = ", ".join(f"{h.id} {h.kind}" for h in HOUSEHOLDS)
    console.print(
        f"[bold]dashboard: {api}/  sign in as household-1 / {passwords['household-1']}[/bold]\n"
        f"households  {kinds}; every login in {d}/households.txt\n"
        f"trading     {AUCTION_COMMUNITY} clears by call auction (household-4 sells PV, "
        f"household-5 buys): Market, Wallet, My trading conditions, Ratings on each dashboard\n"
        f"operator    admin token in {d}/admin-token: the API at {api}/docs (Authorize), "
        f"`meterchain backend access|settle ... --db {d}/backend.sqlite`\n"
        f"console     [bold]{api}/console[/bold]: open the one-time link in {d}/console-invitation, "
        f"choose a user name and password, add the TOTP key to an authenticator app, sign in with its code\n"
        f"utility     key in {d}/utility-key: curl -H \"Authorization: Bearer $(cat "
        f"{d}/utility-key)\" {api}/api/v1/fleet\n"
        f"installer   an SDM630 no gateway reads yet on {extra_meter} ({d}/extra-meter), a one-time "
        f"token in {d}/installer-token: scan, provision, check (README, Installers)\n"
        f"anyone      the log's public key: {api}/api/v1/log/public-key ({d}/log.pub); "
        f"check a proof bundle with {cli} verify" + consortium_line
    )


def backend_toml(config: BackendConfig) -> str:
    """The backend's config file as ``backend serve --config`` reads it (deploy/backend.toml
    explains each setting)."""
    lines = ["[backend]"]
    for name in ("db", "broker", "http_host", "http_port", "log_key", "origin", "admin_token",
                 "seal_interval", "seal_coalesce", "settle_every", "gateway_broker_url", "public_url",
                 "witness_policy", "witness_timeout"):
        value = getattr(config, name)
        lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


async def start_backend(workdir: Path, config: BackendConfig, api: str) -> asyncio.subprocess.Process:
    """``meterchain backend serve --config backend.toml`` in a process of its own (its own core
    for ingest and sealing while the agents catch up); returns once its API answers."""
    import httpx

    config_path = workdir / "backend.toml"
    _write_private(config_path, backend_toml(config))
    log_path = workdir / "backend.log"
    with log_path.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterchain.cli.main", "backend", "serve", "--config",
            str(config_path), stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            # Ctrl-C reaches the demo, which stops the backend; relative defaults land in workdir
            start_new_session=True, cwd=workdir, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if proc.returncode is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                await stop_backend(proc)
                raise BackendFailed("the backend did not start; the end of "
                                    f"{log_path}:\n" + "\n".join(tail))
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{api}/healthz")).status_code == 200:
                    return proc
            await asyncio.sleep(0.3)


def _die_with_parent() -> None:
    """In the backend's child process: SIGTERM it if the demo dies without stopping it (a
    SIGKILL), so no orphaned backend keeps the port. Linux only; elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


async def stop_backend(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the backend seals what is pending and stops), SIGKILL after 60 s."""
    await consortium.stop_process(proc, 60)


class BackendFailed(Exception):
    """The demo's backend process did not come up; carries the end of its log."""


def _secure_db(path: Path) -> None:
    """The database holds password hashes and key hashes: only its owner may read it."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():
            file.chmod(0o600)


def keep_modbus_chatter_in(path: Path) -> Path:
    """Send pymodbus's log records to a file instead of the console: its errors carry multi-line
    frame dumps that bury the guide, while the agent already reports each failed read in one
    line with its cause and fix (event=meter_read_failed)."""
    modbus = logging.getLogger("pymodbus")
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
               for h in modbus.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        modbus.addHandler(handler)
    modbus.propagate = False
    return path


async def run_demo(workdir: Path, http_port: int, duration: float | None,
                   history_days: int = DEFAULT_HISTORY_DAYS, show_progress: bool = True,
                   with_witnesses: bool = True) -> None:
    check_port_free("127.0.0.1", http_port)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    modbus_log = keep_modbus_chatter_in(workdir / "modbus.log")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    timeline_file = workdir / "timeline.json"
    timeline = Timeline.load_or_start(timeline_file, history_days, time.time())
    timeline.save(timeline_file)  # the origin fixes the meters' counters for every later run
    broker = await start_broker(workdir=workdir / "broker")
    console.print(f"broker      [bold]{broker.kind}[/bold] on {broker.host}:{broker.port}")
    console.print(f"meters      pymodbus's own messages (frame dumps of late or garbled answers) go to {modbus_log}")
    token_file = workdir / "admin-token"
    if not token_file.exists():
        _write_private(token_file, secrets.token_urlsafe(24) + "\n")
    token = token_file.read_text().strip()
    api = f"http://127.0.0.1:{http_port}"
    db = workdir / "backend.sqlite"
    _secure_db(db)
    policy_file = workdir / "witnesses.policy"
    config = BackendConfig(
        db=str(db), broker=broker.url, http_port=http_port, log_key=str(workdir / "log.key"),
        origin=DEMO_ORIGIN, admin_token=token, seal_interval=2.0, public_url=api,
        gateway_broker_url=broker.url, witness_policy=str(policy_file) if with_witnesses else "",
        # loopback witnesses are slow only when the machine is busy: wait rather than miss a quorum
        witness_timeout=10.0,
        # a seal waits 1 s for more readings to join it: while the history is signed, the witnesses
        # are asked about once a second, not for every few readings (docs/witness.md, "The demo")
        seal_coalesce=1.0 if with_witnesses else BackendConfig().seal_coalesce,
    )

    store = await open_store(config.db)
    try:
        enrolled = {d for d, _ in await store.devices()}
        for h in HOUSEHOLDS:
            public = _write_key(workdir / f"{h.device}.key")
            if h.device not in enrolled:
                await registry.enrol(store, h.device, public, int(time.time()))
    finally:
        await store.close()
    logins_file = workdir / "households.txt"
    passwords = await _households(config.db, HOUSEHOLDS, logins_file, since=timeline.origin)

    # Meters and agents share one clock: the meters' counters integrate the power they report,
    # from the timeline's origin (the same on every run, so registers never go back).
    clock = TimeLapseClock(timeline.origin)
    gateways: list[DemoGateway] = []
    for h in HOUSEHOLDS:
        bus = ModbusBusEmulator([EmulatedMeter("sdm630", m.modbus_id, 9600, m.serial, m.profile,
                                               clock.now) for m in h.meters])
        pty = await bus.start()
        gateways.append(DemoGateway(h, _agent_config(workdir, h, pty, broker, api), bus, pty))
    resume = max(timeline.origin, timeline.until - INTERVAL)
    clock.advance_to(resume)

    # An extra meter no gateway reads yet: the installer's scan -> provision -> check.
    extra_bus = ModbusBusEmulator([EmulatedMeter("sdm630", 1, 9600, EXTRA_SERIAL,
                                                 LoadProfile(seed=9, pv_peak_w=0))])
    extra_meter = await extra_bus.start()
    agents: list[asyncio.Task[None]] = []
    status: asyncio.Task[None] | None = None
    backend: asyncio.subprocess.Process | None = None
    witnesses: list[consortium.DemoWitness] = []
    watcher: asyncio.Task[None] | None = None
    policy: WitnessPolicy | None = None
    try:
        # The log key first: the witnesses are told which log they witness (the sealer reuses it).
        log_signer = load_or_create_log_key(workdir / "log.key", DEMO_ORIGIN)
        log_key = str(log_signer.verifier)
        (workdir / "log.pub").write_text(log_key + "\n")
        if with_witnesses:
            witnesses = consortium.prepare_witnesses(workdir, log_signer.verifier)
            policy = consortium.write_policy(policy_file, witnesses, log_signer.verifier)
            await consortium.start_witnesses(witnesses, child_setup=_die_with_parent)
            watcher = asyncio.create_task(consortium.watch_witnesses(
                witnesses, stop, lambda line: console.print(f"[bold red]witness[/bold red]     {line}"), _show))
            console.print(f"witnesses   {', '.join(f'{w.key.name} {w.url}' for w in witnesses)}; "
                          f"{policy.describe()} must cosign ({_show(policy_file)}); "
                          f"logs in {_show(workdir / 'witnesses')}/*/witness.log")
        backend = await start_backend(workdir, config, api)
        _secure_db(db)
        control = workdir / "control.key"  # the sealer's ack-signing key, where the backend has one
        verifier = (str(NoteSigner.parse(control.read_text().strip()).verifier)
                    if control.exists() else "")
        for g in gateways:  # gateways hold receipts, verified with the log key and policy (docs/agent.md)
            _agent_config(workdir, g.household, g.pty, broker, api, verifier, log_key,
                          policy.to_text() if policy else "")
        console.print(f"backend     API {api}/api/v1   docs [bold]{api}/docs[/bold]   "
                      f"metrics {api}/metrics   log {workdir / 'backend.log'}")
        credentials = await setup_operations(api, token, workdir, extra_meter)
        if time.time() - resume > 2 * INTERVAL:
            console.print(f"history     signing every quarter hour from {_local(resume)} to now "
                          "through the real pipe (time-lapse; docs/decisions.md)")
            began = time.monotonic()
            steps = await _unless_stopped(catch_up(gateways, clock, resume, show_progress), stop)
            if steps is None:  # Ctrl-C during the history: stop now, keep what is in
                return
            console.print(f"            {steps} quarter hours per meter in "
                          f"{time.monotonic() - began:.0f} s")
        began = time.monotonic()
        settled = await _unless_stopped(setup_settlement(api, token, timeline.origin), stop)
        if settled is None:
            return
        console.print(f"settlement  {settled} quarter hours settled per community "
                      f"({PRORATA_COMMUNITY}: pro rata, {AUCTION_COMMUNITY}: call auctions) in "
                      f"{time.monotonic() - began:.0f} s; bills, trades and savings on each "
                      "household's bill page")
        clock.advance_to(time.time() + INTERVAL)  # live from here on (a no-op if already)
        timeline.until = int(time.time()) // INTERVAL * INTERVAL
        timeline.save(timeline_file)
        agents = [asyncio.create_task(Agent(load_config(g.config_path)).run(),
                                      name=g.device) for g in gateways]
        status = asyncio.create_task(_status(config.db, gateways, stop, 10.0, timeline,
                                             timeline_file, policy))
        for g in gateways:
            meters = ", ".join(f"{m.name} {m.serial}" for m in g.household.meters)
            console.print(f"gateway     {g.device} ({g.household.kind}): {meters} on {g.pty}, "
                          f"config {_show(g.config_path)}")
        console.print(f"live        every 15 minutes each agent signs a reading; live power every "
                      f"{TELEMETRY_SECONDS} s. Ctrl-C stops everything.")
        print_guide(api, workdir, passwords, credentials, extra_meter, witnesses)
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
        await _stopped(agents)
        if backend is not None:
            await stop_backend(backend)  # it seals what is pending: the witnesses still cosign
        if watcher is not None:
            await asyncio.gather(watcher, return_exceptions=True)
        await consortium.stop_witnesses(witnesses)
        if status is not None:
            await asyncio.gather(status, return_exceptions=True)
        for g in gateways:
            await g.bus.stop()
        await extra_bus.stop()
        await broker.stop()
        _secure_db(db)
        console.print("demo stopped; data kept in", workdir)


def demo(
    workdir: Path = typer.Option(Path("demo-data"), "--dir", help="Where keys, configs and databases go."),
    http_port: int = typer.Option(8000, "--http-port", help="The dashboard's and API's port."),
    history_days: int = typer.Option(
        DEFAULT_HISTORY_DAYS, "--history-days", min=1, max=90,
        help="On first start, sign this many past days through the pipe (time-lapse)."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds."),
    witnesses: bool = typer.Option(
        True, "--witnesses/--no-witnesses",
        help="Run the consortium: three witness processes, checkpoints cosigned 2 of 3."),
) -> None:
    """Run broker, backend, emulated meters and their gateway agents, with a month of history;
    print where each kind of user goes and how to sign in."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    try:
        check_port_free("127.0.0.1", http_port)
    except PortTaken as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        raise typer.Exit(2) from None
    os.umask(0o077)  # keys, tokens, passwords and the database: the owner's alone
    try:
        asyncio.run(run_demo(workdir.resolve(), http_port, duration, history_days,
                             with_witnesses=witnesses))
    except (BackendFailed, consortium.WitnessFailed) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
