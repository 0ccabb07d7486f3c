"""The demo's consortium (issue 17, docs/witness.md): three witness processes and a 2-of-3 policy.

The utility, the grid operator and the regulator each run ``meterchain witness serve`` in a
directory of their own under ``demo-data/witnesses/``; the first start runs what ``meterchain
witness init`` runs (a new key, mode 0600, and ``witness.toml``), later starts reuse both, so the
witnesses remember what they cosigned across runs. Each listens on a loopback port: the one it had
if still free, a free one otherwise (no port to choose, none to collide). The policy file
``demo-data/witnesses.policy`` names the log, the three witnesses with their URLs and the quorum;
the backend asks the witnesses after each seal, hands the file to gateways at provisioning, and its
households' proof pages require the quorum.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from meterchain.backend.api.ports import PortTaken, check_port_free
from meterchain.contract.cosignature import CosignerKey
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteVerifier
from meterchain.contract.tlog_policy import Witness, WitnessPolicy
from meterchain.mqtt.broker import free_port
from meterchain.witness.config import load_config, write_new

#: (the policy's name, the witness's key name, who runs it)
WITNESSES = (("stadtwerke", "stadtwerke.example/witness", "the utility"),
             ("netz", "netz.example/witness", "the grid operator"),
             ("regulator", "regulator.example/witness", "the regulator"))
QUORUM = 2  # of 3: any two overlap in one, so one honest witness keeps two histories apart


class WitnessFailed(MeterchainError):
    """A demo witness did not start; carries the end of its log."""

    check = "witness"


@dataclass
class DemoWitness:
    """One witness of the consortium, its directory, port and process."""

    name: str  # the policy's name for it
    role: str
    directory: Path
    port: int
    key: CosignerKey
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "witness.toml"

    @property
    def log(self) -> Path:
        return self.directory / "witness.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "witness.pid"


def _port_free(port: int, taken: set[int]) -> bool:
    if port in taken:
        return False
    try:
        check_port_free("127.0.0.1", port)
    except PortTaken:
        return False
    return True


def prepare_witnesses(workdir: Path, log_key: NoteVerifier) -> list[DemoWitness]:
    """The three witnesses' directories: made on first start (``witness init``), reused later,
    each on its old port if that is still free and on a free one otherwise."""
    witnesses: list[DemoWitness] = []
    taken: set[int] = set()
    for name, key_name, role in WITNESSES:
        directory = workdir / "witnesses" / name
        config = directory / "witness.toml"
        if not config.exists():
            port = free_port()
            while port in taken:
                port = free_port()
            write_new(directory, key_name, [str(log_key)], f"127.0.0.1:{port}")
        settings = load_config(config)
        if str(log_key) not in {str(v) for vs in settings.logs.values() for v in vs}:
            raise WitnessFailed(f"witness {key_name} in {directory} witnesses another log, not "
                                f"{log_key.name} with this key: remove {directory} to start it anew",
                                path=str(directory))
        port = settings.port
        if not _port_free(port, taken):  # another program has it now: move to a free one
            while not _port_free(port := free_port(), taken):
                pass
            text = re.sub(r'^listen = ".*"$', f'listen = "127.0.0.1:{port}"',
                          config.read_text(encoding="utf-8"), count=1, flags=re.M)
            config.write_text(text, encoding="utf-8")
        taken.add(port)
        witnesses.append(DemoWitness(name, role, directory, port, settings.cosigner.key))
    return witnesses


def write_policy(path: Path, witnesses: list[DemoWitness], log_key: NoteVerifier) -> WitnessPolicy:
    """``witnesses.policy`` (C2SP tlog-policy): the log, the witnesses with URLs, 2 of 3."""
    policy = WitnessPolicy.k_of_n(QUORUM, [Witness(w.name, w.key, w.url) for w in witnesses],
                                  logs=[log_key])
    roles = ", ".join(f"{w.name} ({w.role})" for w in witnesses)
    path.write_text(f"# the demo's consortium: {roles}; rewritten on every start\n"
                    + policy.to_text(), encoding="utf-8")
    return policy


async def start_witnesses(witnesses: list[DemoWitness], timeout: float = 90.0,
                          child_setup: Callable[[], None] | None = None) -> None:
    """``meterchain witness serve`` for each, in parallel (its own session: Ctrl-C reaches the
    demo, which stops them); returns once every one answers HTTP, or raises
    :class:`WitnessFailed` with the end of the log of the first that did not."""
    await asyncio.gather(*(_start(w, timeout, child_setup) for w in witnesses))


async def _start(witness: DemoWitness, timeout: float, child_setup: Callable[[], None] | None) -> None:
    with witness.log.open("ab") as log_file:
        witness.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterchain.witness", "serve", "-c", str(witness.config),
            stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            cwd=witness.directory, preexec_fn=child_setup)
    witness.pid_file.write_text(f"{witness.proc.pid}\n")
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if witness.proc.returncode is not None or time.monotonic() > deadline:
                why = (f"exited with status {witness.proc.returncode}" if witness.proc.returncode
                       is not None else f"did not answer within {timeout:.0f} s")
                tail = witness.log.read_text(errors="replace").splitlines()[-10:]
                raise WitnessFailed(f"witness {witness.key.name} {why}; the end of {witness.log}:\n"
                                    + "\n".join(tail), witness=witness.name)
            with contextlib.suppress(httpx.HTTPError):
                await client.get(witness.url + "/")  # any answer: it serves
                return
            await asyncio.sleep(0.2)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it has already ended."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def stop_witnesses(witnesses: list[DemoWitness]) -> None:
    """SIGTERM each running witness (it commits nothing half: docs/witness.md), SIGKILL after 10 s."""
    async def stop(witness: DemoWitness) -> None:
        if witness.proc is not None:
            await stop_process(witness.proc, 10)
        witness.pid_file.unlink(missing_ok=True)

    await asyncio.gather(*(stop(w) for w in witnesses))


async def watch_witnesses(witnesses: list[DemoWitness], stop: asyncio.Event,
                          report: Callable[[str], None], show: Callable[[Path], str] = str) -> None:
    """Report a witness that exits while the demo runs, in one line (``report`` gets it without a
    prefix): which, its status, its log, and whether the rest still make the quorum. Returns
    when ``stop`` is set."""
    alive = {w.name for w in witnesses}

    async def one(witness: DemoWitness) -> None:
        assert witness.proc is not None
        status = await witness.proc.wait()
        if stop.is_set():
            return
        alive.discard(witness.name)
        quorum = (f"{len(alive)} of {len(witnesses)} left, the quorum of {QUORUM} holds" if len(alive) >= QUORUM
                  else f"{len(alive)} of {len(witnesses)} left: new checkpoints miss the quorum of {QUORUM} "
                       "(no receipts; verify --policy fails its witnesses check)")
        report(f"{witness.key.name} ({witness.role}) stopped with status {status}, "
               f"log {show(witness.log)}; {quorum}")

    watchers = [asyncio.create_task(one(w)) for w in witnesses if w.proc is not None]
    try:
        await stop.wait()
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
