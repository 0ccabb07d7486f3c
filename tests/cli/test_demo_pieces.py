"""The demo's parts in this process (tests/cli/test_demo.py runs the whole demo as a user does):
its command-line checks, the files it writes and their modes, the catch-up driver that plans the
time-lapse history, the guide it prints, and how it starts and stops its backend process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from meterchain.agent.clock import TimeLapseClock
from meterchain.agent.config import load_config
from meterchain.backend.api.ports import PortTaken
from meterchain.backend.config import BackendConfig
from meterchain.cli import demo
from meterchain.cli.main import build_app
from meterchain.contract import signing
from meterchain.contract.note import NoteSigner
from meterchain.mqtt.broker import RunningBroker, free_port
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from tests.support.humantime import assert_no_unix_seconds


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():  # type: ignore[no-untyped-def]
    """A umask that would make files world-readable: the demo's modes must not depend on it."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# ------------------------------------------------------------------ the command line


async def test_run_demo_checks_its_port_before_it_creates_anything(tmp_path: Path) -> None:
    """The command checks too (test_demo.py runs it); this is the check inside, for callers of run_demo."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortTaken, match=f"port {port}"):
            await demo.run_demo(tmp_path / "d", port, duration=0)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("days", "bound"), [("0", "greater than or equal to 1"), ("91", "less than or equal to 90")])
def test_history_days_outside_1_to_90_is_refused(tmp_path: Path, days: str, bound: str) -> None:
    result = CliRunner().invoke(build_app(), ["demo", "--dir", str(tmp_path / "d"),
                                              "--history-days", days], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "Invalid value for '--history-days'" in result.output and bound in result.output
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------ files and their modes


def test_secrets_are_written_for_their_owner_alone(tmp_path: Path, open_umask: None) -> None:
    token = tmp_path / "admin-token"
    token.write_text("old\n")
    token.chmod(0o644)
    demo._write_private(token, "new\n")
    assert token.read_text() == "new\n" and _mode(token) == 0o600

    key = tmp_path / "gw.key"
    public = demo._write_key(key)
    assert _mode(key) == 0o600
    assert public == signing.load_signer(key.read_bytes()).public_key_der
    assert demo._write_key(key) == public  # a re-run keeps the gateway's key


def test_the_database_and_its_journal_files_are_the_owners_alone(tmp_path: Path, open_umask: None) -> None:
    db = tmp_path / "backend.sqlite"
    demo._secure_db(db)
    assert db.exists() and _mode(db) == 0o600
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).write_bytes(b"")
        db.with_name(db.name + suffix).chmod(0o644)
    demo._secure_db(db)
    assert {_mode(db.with_name(db.name + s)) for s in ("", "-wal", "-shm")} == {0o600}


def test_agent_config_is_what_the_agent_loads(tmp_path: Path, open_umask: None) -> None:
    household = demo.HOUSEHOLDS[2]  # the heat pump household: two meters on one bus
    broker = RunningBroker("mosquitto", "127.0.0.1", 18830, username="demo", password="pa ss")
    path = demo._agent_config(tmp_path, household, "/dev/pts/7", broker, "http://127.0.0.1:8000")
    assert _mode(path) == 0o600
    config = load_config(path)
    assert config.device_id == household.device == "gw-0003"
    assert [(m.name, m.port, m.modbus_id) for m in config.meters] == [
        ("house", "/dev/pts/7", 1), ("heat-pump", "/dev/pts/7", 2)]
    assert config.broker.address.port == 18830 and config.broker.address.username == "demo"
    assert config.broker.address.password == "pa ss"
    assert config.telemetry_seconds == demo.TELEMETRY_SECONDS and config.control_key is None

    anonymous = RunningBroker("amqtt", "127.0.0.1", 18831)
    control = str(NoteSigner.generate("demo.meterchain.local/control").verifier)
    log_key = str(NoteSigner.generate("demo.meterchain.local/log").verifier)
    path = demo._agent_config(tmp_path, household, "/dev/pts/7", anonymous, "http://127.0.0.1:8000",
                              control_key=control, log_key=log_key)
    config = load_config(path)
    assert config.broker.address.username is None and config.control_key == control
    assert config.log_key == log_key and config.witness_policy is None  # receipts: log-signed


def test_logins_file_skips_comments_and_short_lines(tmp_path: Path) -> None:
    assert demo._read_logins(tmp_path / "households.txt") == {}
    (tmp_path / "households.txt").write_text(
        "# demo dashboard logins: username password household\n"
        "household-1 s3cret household-1\n"
        "broken\n"
        "household-2 other household-2\n")
    assert demo._read_logins(tmp_path / "households.txt") == {"household-1": "s3cret",
                                                               "household-2": "other"}


def test_timeline_starts_history_days_back_on_the_grid_and_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "timeline.json"
    now = 1_717_400_000.5
    timeline = demo.Timeline.load_or_start(path, 35, now)
    assert timeline.origin == timeline.until and timeline.origin % demo.INTERVAL == 0
    assert 0 <= now - 35 * 86_400 - timeline.origin < demo.INTERVAL
    timeline.until = timeline.origin + 10 * demo.INTERVAL
    timeline.save(path)
    assert json.loads(path.read_text()) == {"origin": timeline.origin, "until": timeline.until}
    again = demo.Timeline.load_or_start(path, 2, now + 86_400)  # other days: the file wins
    assert (again.origin, again.until) == (timeline.origin, timeline.until)


def test_backend_toml_is_read_back_as_the_same_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MC_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("MC_BROKER_URL", raising=False)
    config = BackendConfig(db=str(tmp_path / "b.sqlite"), broker="mqtt://u:p@127.0.0.1:1884", http_port=8123,
                           log_key=str(tmp_path / "log.key"), origin=demo.DEMO_ORIGIN, admin_token="t0ken",
                           seal_interval=2.0, public_url="http://127.0.0.1:8123",
                           gateway_broker_url="mqtt://127.0.0.1:1884")
    path = tmp_path / "backend.toml"
    path.write_text(demo.backend_toml(config))
    assert BackendConfig.load(path) == config


# ------------------------------------------------------------------ what it prints


def test_the_guide_names_every_way_in_with_paths_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    credentials = demo.Credentials("utility-token", "installer-token")
    with demo.console.capture() as captured:
        demo.print_guide("http://127.0.0.1:8000", tmp_path / "demo-data", {"household-1": "pw-1"},
                         credentials, "/dev/pts/9")
    text = captured.get()
    assert "sign in as household-1 / pw-1" in text
    assert "demo-data/households.txt" in text and str(tmp_path) not in text  # relative to the cwd
    for h in demo.HOUSEHOLDS:
        assert f"{h.id} {h.kind}" in text
    for where in ("http://127.0.0.1:8000/console", "http://127.0.0.1:8000/docs", "/dev/pts/9",
                  "demo-data/utility-key", "demo-data/installer-token", "demo-data/console-invitation"):
        assert where in text, where
    elsewhere = tmp_path.parent / "elsewhere"
    with demo.console.capture() as captured:
        demo.print_guide("http://127.0.0.1:8000", elsewhere, {"household-1": "pw-1"}, credentials, "/dev/pts/9")
    assert f"{elsewhere}/households.txt" in captured.get()  # outside the cwd: the whole path


def test_history_times_are_local_with_a_zone() -> None:
    shown = demo._local(1_717_400_000)
    assert_no_unix_seconds(shown, "the demo's history line")
    assert shown.split()[-1].isalpha() or shown.split()[-1].startswith(("+", "-"))  # a zone name or offset


# ------------------------------------------------------------------ the catch-up driver


class _Poller:
    def __init__(self) -> None:
        self.cycles = 0
        self.next_end: int | None = None


class _Outbox:
    """Depth the backend has not acked: above the window for the first ``backlog`` looks."""

    def __init__(self, backlog: int) -> None:
        self.looks = 0
        self.backlog = backlog

    async def depth(self) -> int:
        self.looks += 1
        return demo.CATCH_UP_WINDOW + 1 if self.looks <= self.backlog else 0


class _Gateway:
    """An agent as the driver sees it: started, one poll cycle per interval of the clock."""

    def __init__(self, clock: TimeLapseClock, start: int, backlog: int = 0, dies_after: int | None = None) -> None:
        self.started = asyncio.Event()
        self.poller = _Poller()
        self.outbox = _Outbox(backlog)
        self._clock, self._start, self._dies_after = clock, start, dies_after

    async def run(self) -> None:
        self.started.set()
        due = self._start + demo.INTERVAL
        while True:
            self.poller.next_end = due
            await self._clock.sleep_until(due)
            if self._dies_after is not None and self.poller.cycles >= self._dies_after:
                raise RuntimeError("meter bus gone")
            self.poller.cycles += 1
            due += demo.INTERVAL


async def _drive(gateways: list[_Gateway], clock: TimeLapseClock, start: int,
                 progress: Progress | None = None) -> int:
    tasks = [asyncio.create_task(g.run()) for g in gateways]
    try:
        return await demo._drive_catch_up(clock, list(zip(gateways, tasks, strict=True)),  # type: ignore[arg-type]
                                          start, progress)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_catch_up_runs_every_interval_up_to_now_then_the_clock_is_live() -> None:
    start = int(time.time()) - 3 * demo.INTERVAL - 60
    clock = TimeLapseClock(start)
    gateways = [_Gateway(clock, start), _Gateway(clock, start, backlog=3)]
    with Progress(console=Console(file=io.StringIO(), width=200)) as progress:
        steps = await _drive(gateways, clock, start, progress)
        description = progress.tasks[0].description
    assert steps == 3 and clock.live
    assert [g.poller.cycles for g in gateways] == [3, 3]  # every agent signed every interval
    assert gateways[1].outbox.looks > 3  # it waited for the backend to catch up before moving on
    assert description.startswith("history ")  # "history Mon 03 Jun 14:15 CEST": where it has got to
    assert_no_unix_seconds(description, "the catch-up progress")


class _SlowStartingGateway(_Gateway):
    """An agent that says it started, then computes its first boundary a little later (a loaded
    machine): the driver must not move the clock before it waits for that boundary, or it would
    wait for the next one while the driver waits for its cycle (CI stalled there once)."""

    async def run(self) -> None:
        self.started.set()
        await asyncio.sleep(0.05)
        while True:
            due = self.poller.next_end = (int(self._clock.now()) // demo.INTERVAL + 1) * demo.INTERVAL
            await self._clock.sleep_until(due)
            self.poller.cycles += 1


async def test_catch_up_waits_until_every_poller_sleeps_toward_the_next_boundary() -> None:
    start = (int(time.time()) - 3 * demo.INTERVAL - 60) // demo.INTERVAL * demo.INTERVAL
    clock = TimeLapseClock(start)
    gateways = [_Gateway(clock, start), _SlowStartingGateway(clock, start)]
    async with asyncio.timeout(30):
        steps = await _drive(gateways, clock, start)
    assert steps >= 3 and clock.live
    assert [g.poller.cycles for g in gateways] == [steps, steps]


async def test_catch_up_says_why_when_an_agent_dies() -> None:
    start = int(time.time()) - 5 * demo.INTERVAL
    clock = TimeLapseClock(start)
    with pytest.raises(RuntimeError, match="meter bus gone"):
        await asyncio.wait_for(_drive([_Gateway(clock, start, dies_after=1)], clock, start), 30)


async def test_ctrl_c_cancels_the_work_and_returns_none() -> None:
    stop, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> int:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    async def quick() -> int:
        return 7

    assert await demo._unless_stopped(quick(), stop) == 7
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await demo._unless_stopped(forever(), stop) is None
    assert cancelled.is_set()


async def test_an_agent_that_will_not_stop_is_named_and_left(caplog: pytest.LogCaptureFixture) -> None:
    stubborn = asyncio.create_task(asyncio.sleep(3600), name="gw-0042")
    caplog.set_level(logging.WARNING, logger="meterchain.cli.demo")
    try:
        await demo._stopped([stubborn], timeout=0.05)
        assert "gw-0042 did not stop" in caplog.text
    finally:
        stubborn.cancel()
    await demo._stopped([])  # nothing to wait for: returns at once


# ------------------------------------------------------------------ the backend process


async def test_stop_backend_stops_a_running_process_with_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    await demo.stop_backend(proc)
    assert proc.returncode == -signal.SIGTERM
    await demo.stop_backend(proc)  # already stopped: nothing to do


@pytest.mark.timeout(180)
async def test_a_backend_that_cannot_start_fails_with_the_end_of_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = BackendConfig(db=str(tmp_path / "backend.sqlite"), broker=f"mqtt://127.0.0.1:{free_port()}",
                               http_port=port, log_key=str(tmp_path / "log.key"), admin_token="t")
        with pytest.raises(demo.BackendFailed, match="did not start") as failed:
            await demo.start_backend(tmp_path, config, f"http://127.0.0.1:{port}")
    assert str(tmp_path / "backend.log") in str(failed.value)
    assert _mode(tmp_path / "backend.toml") == 0o600


def test_pymodbus_chatter_goes_to_its_file_not_the_console(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """pymodbus's errors carry multi-line frame dumps that buried the guide under load; they go to
    modbus.log, while the agent's own one-line meter_read_failed warnings still reach the console."""
    modbus = logging.getLogger("pymodbus")
    handlers, propagate, level = list(modbus.handlers), modbus.propagate, modbus.level
    modbus.setLevel(logging.WARNING)  # other tests silence pymodbus (the installer's scan does)
    try:
        path = demo.keep_modbus_chatter_in(tmp_path / "modbus.log")
        assert demo.keep_modbus_chatter_in(path) == path  # a second run adds no second handler
        with caplog.at_level(logging.WARNING):
            logging.getLogger("pymodbus.logging").error("No response received\n>>>>> send: 0x1 0x3")
            logging.getLogger("meterchain.agent.scheduler").warning("event=meter_read_failed meter=house")
        for handler in modbus.handlers:
            handler.flush()
        assert path.read_text().count("No response received") == 1
        assert [r.name for r in caplog.records] == ["meterchain.agent.scheduler"]
    finally:
        for handler in modbus.handlers:
            if handler not in handlers:
                modbus.removeHandler(handler)
                handler.close()
        modbus.propagate = propagate
        modbus.setLevel(level)


# ------------------------------------------------------------------ the consortium (issue 17)


def test_witnesses_are_made_once_and_kept_with_their_keys_across_runs(tmp_path: Path) -> None:
    """First start: `witness init` for each of the three; a re-run reuses key and port, and moves a
    witness whose port another program took to a free one."""
    from meterchain.cli import demo_consortium as consortium
    from meterchain.witness.config import load_config as load_witness

    log_key = NoteSigner.generate(demo.DEMO_ORIGIN).verifier
    first = consortium.prepare_witnesses(tmp_path, log_key)
    assert [w.key.name for w in first] == [name for _, name, _ in consortium.WITNESSES]
    assert len({w.port for w in first}) == 3
    for w in first:
        assert _mode(w.directory / "witness.key") == 0o600
        assert load_witness(w.config).logs == {log_key.name: (log_key,)}
    with socket.socket() as taken:  # another program on the regulator's port
        taken.bind(("127.0.0.1", first[2].port))
        taken.listen()
        again = consortium.prepare_witnesses(tmp_path, log_key)
    assert [str(w.key) for w in again] == [str(w.key) for w in first]  # the same keys
    assert [w.port for w in again[:2]] == [w.port for w in first[:2]]
    assert again[2].port not in {w.port for w in first}
    assert load_witness(again[2].config).port == again[2].port  # written where serve reads it
    other = NoteSigner.generate(demo.DEMO_ORIGIN).verifier
    with pytest.raises(consortium.WitnessFailed, match="witnesses another log"):
        consortium.prepare_witnesses(tmp_path, other)


def test_the_policy_file_asks_two_of_the_three_witnesses_at_their_urls(tmp_path: Path) -> None:
    from meterchain.backend.log.cosigning import load_policy
    from meterchain.backend.provisioning.tokens import settings_from_config
    from meterchain.cli import demo_consortium as consortium
    from meterchain.contract.cosignature import Cosigner

    log_key = NoteSigner.generate(demo.DEMO_ORIGIN).verifier
    witnesses = consortium.prepare_witnesses(tmp_path, log_key)
    path = tmp_path / "witnesses.policy"
    written = consortium.write_policy(path, witnesses, log_key)
    policy = load_policy(str(path))  # as the backend's sealer reads it
    assert policy == written and policy.describe() == "2 of stadtwerke, netz, regulator"
    assert [(w.name, w.url) for w in policy.witnesses.values()] == [(w.name, w.url) for w in witnesses]
    assert [key for key, _ in policy.logs] == [log_key]
    signed = {w.key.name for w in witnesses[:2]}
    assert policy.satisfied(signed) and not policy.satisfied(set(list(signed)[:1]))
    assert Cosigner.generate("stranger.example/w").key not in policy.keys
    # provisioning hands gateways the same policy (the installer's agent.toml)
    config = BackendConfig(db=str(tmp_path / "b.sqlite"), log_key=str(tmp_path / "log.key"),
                           witness_policy=str(path), gateway_broker_url="mqtt://127.0.0.1:1883")
    assert settings_from_config(config).witness_policy == policy.to_text()


def test_gateway_configs_carry_the_log_key_and_the_witness_policy(tmp_path: Path) -> None:
    from meterchain.contract.cosignature import Cosigner
    from meterchain.contract.tlog_policy import Witness, WitnessPolicy, parse_policy

    log_key = str(NoteSigner.generate(demo.DEMO_ORIGIN).verifier)
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", Cosigner.generate(f"w{i}.example/w").key,
                                              f"http://127.0.0.1:{7000 + i}") for i in (1, 2, 3)])
    broker = RunningBroker("amqtt", "127.0.0.1", 18831)
    path = demo._agent_config(tmp_path, demo.HOUSEHOLDS[0], "/dev/pts/7", broker, "http://127.0.0.1:8000",
                              log_key=log_key, witness_policy=policy.to_text())
    config = load_config(path)
    assert config.log_key == log_key and config.witness_policy is not None
    assert parse_policy(config.witness_policy) == policy


def test_the_guide_has_a_consortium_line_with_the_witnesses_and_the_commands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meterchain.cli import demo_consortium as consortium

    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "demo-data"
    witnesses = consortium.prepare_witnesses(workdir, NoteSigner.generate(demo.DEMO_ORIGIN).verifier)
    with demo.console.capture() as captured:
        demo.print_guide("http://127.0.0.1:8000", workdir, {"household-1": "pw-1"},
                         demo.Credentials("u", "i"), "/dev/pts/9", witnesses)
    line = next(x for x in captured.get().splitlines() if x.startswith("consortium"))
    for w in witnesses:
        assert f"{w.name} {w.url}" in line
    assert "2 of 3 must cosign (demo-data/witnesses.policy)" in line
    assert (".venv/bin/meterchain verify BUNDLE --log-key demo-data/log.pub --policy "
            "demo-data/witnesses.policy") in line
    assert (".venv/bin/meterchain monitor http://127.0.0.1:8000 --log-key demo-data/log.pub "
            "--policy demo-data/witnesses.policy") in line
    assert "kill $(cat demo-data/witnesses/regulator/witness.pid)" in line
    with demo.console.capture() as captured:  # --no-witnesses: no such line
        demo.print_guide("http://127.0.0.1:8000", workdir, {"household-1": "pw-1"},
                         demo.Credentials("u", "i"), "/dev/pts/9")
    assert "consortium" not in captured.get()


def test_the_status_line_says_who_cosigned_and_when_the_quorum_is_missed() -> None:
    from meterchain.contract.checkpoint import Checkpoint
    from meterchain.contract.cosignature import Cosigner, add_signatures
    from meterchain.contract.tlog_policy import Witness, WitnessPolicy

    log = NoteSigner.generate(demo.DEMO_ORIGIN)
    cosigners = [Cosigner.generate(f"w{i}.example/w") for i in (1, 2, 3)]
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", c.key) for i, c in enumerate(cosigners, 1)])
    note = Checkpoint(log.name, 5, b"\x01" * 32).sign(log)
    body = note[: note.rfind("\n\n") + 1]
    two = add_signatures(note, [c.cosign(body, 1_700_000_000) for c in cosigners[:2]])
    one = add_signatures(note, [cosigners[0].cosign(body, 1_700_000_000)])
    assert demo._cosigned(two, policy) == " cosigned 2/3"
    assert "cosigned 1/3 (policy: 2 of w1, w2, w3)" in demo._cosigned(one, policy)


@pytest.mark.timeout(180)
async def test_witnesses_start_answer_and_stop_and_a_dead_one_is_reported_in_one_line(tmp_path: Path) -> None:
    from meterchain.cli import demo_consortium as consortium

    log_key = NoteSigner.generate(demo.DEMO_ORIGIN).verifier
    witnesses = consortium.prepare_witnesses(tmp_path, log_key)
    stop, lines = asyncio.Event(), list[str]()
    try:
        await consortium.start_witnesses(witnesses)
        watcher = asyncio.create_task(consortium.watch_witnesses(witnesses, stop, lines.append))
        pids = [int(w.pid_file.read_text()) for w in witnesses]
        os.kill(pids[1], signal.SIGTERM)  # as the README's "stop one" does
        deadline = time.monotonic() + 60
        while not lines and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(lines) == 1, lines
        assert lines[0].startswith("netz.example/witness (the grid operator) stopped with status")
        assert str(witnesses[1].log) in lines[0] and "2 of 3 left, the quorum of 2 holds" in lines[0]
        os.kill(pids[2], signal.SIGTERM)
        while len(lines) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "1 of 3 left: new checkpoints miss the quorum of 2" in lines[1]
    finally:
        stop.set()
        await consortium.stop_witnesses(witnesses)
    await watcher
    assert len(lines) == 2  # stopping them is not reported
    assert all(w.proc is not None and w.proc.returncode is not None for w in witnesses)
    assert not any(w.pid_file.exists() for w in witnesses)


async def test_a_witness_that_cannot_start_fails_with_the_end_of_its_log(tmp_path: Path) -> None:
    from meterchain.cli import demo_consortium as consortium

    log_key = NoteSigner.generate(demo.DEMO_ORIGIN).verifier
    witnesses = consortium.prepare_witnesses(tmp_path, log_key)
    (witnesses[0].directory / "witness.key").write_text("not a key\n")
    try:
        with pytest.raises(consortium.WitnessFailed, match="exited with status 2") as failed:
            await consortium.start_witnesses(witnesses[:1])
    finally:
        await consortium.stop_witnesses(witnesses)
    assert str(witnesses[0].log) in str(failed.value) and "key file" in str(failed.value)
