"""Witness test helpers: a toy log that signs checkpoints and makes consistency proofs, request
bodies for add-checkpoint, witness processes (``meterchain witness serve``) on free ports, and
witness apps in process behind an httpx transport (:class:`Witnesses`)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.cosignature import Cosigner
from meterchain.contract.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from meterchain.contract.note import NoteSigner
from meterchain.contract.tlog_policy import Witness, WitnessPolicy
from meterchain.witness.config import WitnessConfig
from meterchain.witness.http import WitnessApp
from meterchain.witness.store import WitnessStore

ORIGIN = "meterchain.test/log"


@dataclass
class ToyLog:
    """A log held in memory: leaf hashes, checkpoints and proofs from the contract's reference code."""

    signer: NoteSigner = field(default_factory=lambda: NoteSigner.generate(ORIGIN))
    leaves: list[bytes] = field(default_factory=list)

    def append(self, count: int, tag: bytes = b"") -> None:
        start = len(self.leaves)
        self.leaves += [leaf_hash(tag + b"leaf %d" % i) for i in range(start, start + count)]

    def fork(self) -> ToyLog:
        """The same key, the same leaves so far: a second history to show someone else."""
        return ToyLog(self.signer, list(self.leaves))

    def root(self, size: int | None = None) -> bytes:
        return root_from_leaf_hashes(self.leaves[: len(self.leaves) if size is None else size])

    def checkpoint(self, size: int | None = None) -> str:
        size = len(self.leaves) if size is None else size
        return Checkpoint(self.signer.name, size, self.root(size)).sign(self.signer)

    def proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = len(self.leaves) if new is None else new
        return consistency_proof(old, self.leaves[:new]) if old > 0 else []

    def request(self, old: int, new: int | None = None, *, proof: list[bytes] | None = None,
                note: str | None = None) -> bytes:
        hashes = self.proof(old, new) if proof is None else proof
        return add_checkpoint_body(old, hashes, self.checkpoint(new) if note is None else note)


def add_checkpoint_body(old: int, proof: list[bytes], note: str) -> bytes:
    lines = [f"old {old}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n" + note).encode()


def origin_hash(origin: str = ORIGIN) -> str:
    return hashlib.sha256(origin.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WitnessProcess:
    """``meterchain witness serve`` in a directory of its own."""

    directory: Path
    name: str
    port: int
    vkey: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def create(cls, directory: Path, name: str, log_vkey: str) -> WitnessProcess:
        port = free_port()
        out = subprocess.run(
            [sys.executable, "-m", "meterchain.witness", "init", "--dir", str(directory),
             "--name", name, "--log", log_vkey, "--listen", f"127.0.0.1:{port}"],
            check=True, capture_output=True, text=True, timeout=60)
        vkey = out.stdout.strip().rsplit(" ", 1)[-1]
        return cls(directory, name, port, vkey)

    def start(self, env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        """Start ``meterchain.witness serve``; ``timeout`` is a start-up budget (its imports alone
        take over 10 s on a loaded machine)."""
        log = open(self.directory / "witness.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meterchain.witness", "serve", "-c",
             str(self.directory / "witness.toml")],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"witness {self.name} exited: {(self.directory / 'witness.log').read_text()}")
            try:
                httpx.get(self.url + "/", timeout=0.5)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"witness {self.name} did not answer on {self.url} within {timeout} s: "
                           f"{(self.directory / 'witness.log').read_text()[-2000:]}")

    def wait_dead(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def post(self, body: bytes, timeout: float = 10.0) -> httpx.Response:
        return httpx.post(self.url + "/add-checkpoint", content=body, timeout=timeout)

    def checkpoint(self) -> httpx.Response:
        return httpx.get(f"{self.url}/{origin_hash()}/checkpoint", timeout=10.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Witnesses:
    """Witness apps by host name (http://w1 ...); ``down`` ones fail to connect."""

    def __init__(self, tmp_path: Path, origin_key, names=("w1", "w2", "w3")) -> None:  # type: ignore[no-untyped-def]
        self.cosigners = {n: Cosigner.generate(f"witness.test/{n}") for n in names}
        self.stores = {n: WitnessStore(tmp_path / f"{n}.db") for n in names}
        self.apps = {n: WitnessApp(WitnessConfig(self.cosigners[n], tmp_path / f"{n}.db", "", 0, "",
                                                 {origin_key.name: (origin_key,)}), self.stores[n])
                     for n in names}
        self.down: set[str] = set()

    def policy(self, k: int) -> WitnessPolicy:
        return WitnessPolicy.k_of_n(k, [Witness(n, c.key, f"http://{n}") for n, c in self.cosigners.items()])

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        host = dict(scope["headers"])[b"host"].decode()
        await self.apps[host](scope, receive, send)

    def transport(self) -> httpx.AsyncBaseTransport:
        inner = httpx.ASGITransport(app=self)
        down = self.down

        class Transport(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if request.url.host in down:
                    raise httpx.ConnectError("connection refused", request=request)
                return await inner.handle_async_request(request)

        return Transport()
