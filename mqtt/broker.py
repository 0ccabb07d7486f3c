"""A broker for one machine: Mosquitto where installed, the in-process amqtt broker otherwise.

Used by ``meterchain demo`` and by tests that need a real MQTT broker. Both are bound to
127.0.0.1 on a free port. amqtt never re-sends unacknowledged QoS 1 messages after a reconnect and
drops queued messages of anonymous sessions, so it runs with a generated password (sessions are
then not anonymous); the backend's end-to-end acks cover the redelivery it lacks.
Production brokers are configured from deploy/backend, not from here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    """Path of a Mosquitto binary, or None (``MC_BROKER=embedded`` forces None)."""
    if os.environ.get("MC_BROKER", "auto") == "embedded":
        return None
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


@dataclass
class RunningBroker:
    """A broker this process started; ``url`` carries the credentials clients should use."""

    kind: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)  # Mosquitto's
    _stop: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        auth = ""
        if self.username:
            auth = quote(self.username, safe="") + ":" + quote(self.password or "", safe="") + "@"
        return f"mqtt://{auth}{self.host}:{self.port}"

    async def stop(self) -> None:
        stop = self._stop
        self._stop = None
        if stop is not None:
            await stop()


async def _wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"broker did not open {host}:{port} within {timeout} s") from None
            await asyncio.sleep(0.05)


async def start_mosquitto(binary: str, *, port: int | None = None, workdir: Path | None = None,
                          extra: Sequence[str] = ()) -> RunningBroker:
    """Start Mosquitto with a generated config on a free loopback port (``extra``: more lines
    for its config, e.g. an ``acl_file``)."""
    port = port or free_port()
    tmp = Path(workdir or tempfile.mkdtemp(prefix="mc-mosquitto-"))
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                f"listener {port} 127.0.0.1",
                # Loopback only; production config (TLS, passwords, ACLs) lives in deploy/backend.
                "allow_anonymous true",
                "persistence false",
                # Mosquitto's default of 1000 silently drops QoS 1 messages to a slow subscriber.
                "max_queued_messages 1000000",
                "max_inflight_messages 1000",
                "message_size_limit 65536",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                *extra,
                "",
            ]
        )
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        await _wait_for_port("127.0.0.1", port, timeout=10)
    except TimeoutError:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"mosquitto did not start: {err.strip()}") from None

    async def stop() -> None:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    broker = RunningBroker("mosquitto", "127.0.0.1", port)
    broker._stop = stop
    broker.process = proc  # tests kill it to simulate an outage
    return broker


async def start_embedded(*, port: int | None = None, workdir: Path | None = None) -> RunningBroker:
    """Start the pure-Python amqtt broker in this event loop, bound to 127.0.0.1."""
    from amqtt.broker import Broker  # type: ignore[import-untyped]
    from pwdlib import PasswordHash  # amqtt's own password hashing dependency
    from pwdlib.hashers.argon2 import Argon2Hasher

    port = port or free_port()
    username, password = "meterchain", secrets.token_urlsafe(16)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="mc-amqtt-"))
    tmp.mkdir(parents=True, exist_ok=True)
    pwfile = tmp / "passwd"
    pwfile.write_text(f"{username}:{PasswordHash((Argon2Hasher(),)).hash(password)}\n")
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": 10000}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(pwfile)},
        },
    }
    # amqtt logs every probe and disconnect as an error; keep its real failures only.
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    broker = Broker(config)
    await broker.start()

    async def stop() -> None:
        await broker.shutdown()

    running = RunningBroker("amqtt", "127.0.0.1", port, username, password)
    running._stop = stop
    return running


async def start_broker(*, prefer: str = "auto", workdir: Path | None = None) -> RunningBroker:
    """Mosquitto if installed (or ``prefer='mosquitto'``), else the embedded broker."""
    binary = find_mosquitto() if prefer in ("auto", "mosquitto") else None
    if binary:
        return await start_mosquitto(binary, workdir=workdir)
    if prefer == "mosquitto":
        raise RuntimeError("mosquitto is not installed")
    log.info("mosquitto not found; starting the embedded amqtt broker on 127.0.0.1")
    return await start_embedded(workdir=workdir)
