"""deploy/backend's Mosquitto configuration and ACL, run by a real Mosquitto.

The broker runs the file that render-mosquitto-conf.sh makes from mosquitto.conf.template, with
the ACL file as shipped and logins made by mosquitto-adduser.sh; only ports, folders and the
process user differ from production. Clients speak MQTT 5 (paho-mqtt), so a denied publish is
answered "Not authorized" (0x87) instead of being dropped silently.
"""

from __future__ import annotations

import getpass
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from meterchain.backend.ingest.worker import subscriptions
from meterchain.contract.ack import (
    ack_topic,
    ocmf_topic,
    readings_topic,
    status_topic,
    telemetry_topic,
)
from meterchain.contract.receipt import receipt_topic
from meterchain.mqtt.broker import find_mosquitto, free_port

from tests.support.paths import REPO_ROOT
from tests.support.tls import cert, key, write_pem

ROOT = REPO_ROOT
BACKEND = ROOT / "deploy" / "backend"
NOT_AUTHORIZED = 0x87
ACCEPTED = {0x00, 0x10}  # success; 0x10 = success, "no matching subscribers"
BACKEND_USER = "meterchain-backend"
SHARED_READINGS = "$share/backend/meterchain/v1/+/readings"
WAIT = 30.0  # for what must come (a CONNACK, a SUBACK, a message); a loaded machine is slow


def _mosquitto_or_skip() -> str:
    binary = find_mosquitto()
    if binary is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto and mosquitto_passwd are not installed (apt-get install mosquitto)")
    return binary


# --- a throwaway CA, server and client certificates ----------------------------------------------


@dataclass
class Broker:
    local_port: int
    tls_port: int
    conf_dir: Path
    passwords: dict[str, str]
    process: subprocess.Popen[bytes]

    @property
    def ca(self) -> Path:
        return self.conf_dir / "tls" / "ca.crt"


def _add_user(passwd: Path, user: str) -> str:
    done = subprocess.run(
        [str(BACKEND / "mosquitto-adduser.sh"), "--passwd", str(passwd), user],
        check=True, capture_output=True, text=True, timeout=30,
    )
    password = done.stdout.strip()
    assert len(password) >= 24
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()].count(user) == 1
    return password


def _start(binary: str, workdir: Path, *, client_certs: bool = False) -> Broker:
    conf_dir, data = workdir / "conf", workdir / "data"
    (conf_dir / "tls").mkdir(parents=True)
    data.mkdir()
    ca_key, server_key = key(), key()
    ca_cert = cert("meterchain test CA", ca_key, None, ca=True)
    write_pem(conf_dir / "tls" / "ca.crt", ca_cert)
    write_pem(
        conf_dir / "tls" / "server.crt",
        cert("localhost", server_key, ("meterchain test CA", ca_key), server=True),
        server_key,
    )
    for device in ("gw-1", "gw-2"):  # client certificates for the --client-certs variant
        device_key = key()
        write_pem(workdir / f"{device}.crt", cert(device, device_key, ("meterchain test CA", ca_key)), device_key)
    shutil.copy(BACKEND / "mosquitto.acl", conf_dir / "acl")
    passwords = {user: _add_user(conf_dir / "passwd", user) for user in ("gw-1", "gw-2", BACKEND_USER)}

    local_port, tls_port = free_port(), free_port()
    args = [
        str(BACKEND / "render-mosquitto-conf.sh"), "--conf-dir", str(conf_dir), "--persist-dir", str(data),
        "--local-port", str(local_port), "--tls-listen", f"{tls_port} 127.0.0.1",
    ]
    rendered = subprocess.run(
        args + (["--client-certs"] if client_certs else []),
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    assert not re.search(r"@[A-Z_]+@", rendered.replace("@NAME@", ""))  # every field filled in
    # Only for the test: run as ourselves (as root Mosquitto would switch to the user "mosquitto",
    # who cannot read pytest's private tmp folders).
    conf = workdir / "mosquitto.conf"
    conf.write_text(rendered + f"\nuser {getpass.getuser()}\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60  # a start-up budget
    for port in (local_port, tls_port):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    pytest.fail(f"mosquitto did not start with the rendered config:\n{err}")
                time.sleep(0.05)
    return Broker(local_port, tls_port, conf_dir, passwords, proc)


def _stop(broker: Broker) -> None:
    broker.process.terminate()
    try:
        broker.process.wait(5)
    except subprocess.TimeoutExpired:
        broker.process.kill()
        broker.process.wait()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = _start(_mosquitto_or_skip(), tmp_path_factory.mktemp("mosquitto"))
    try:
        yield running
    finally:
        _stop(running)


# --- a small synchronous MQTT 5 client that records what the broker answered ------------------


class Client:
    def __init__(self, broker: Broker, user: str | None, password: str | None = None, *,
                 tls: bool = False, protocol: int = mqtt.MQTTv5, cert: Path | None = None) -> None:
        self.connack: queue.Queue[int] = queue.Queue()
        self.pubacks: dict[int, int] = {}
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._acked = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user or 'anon'}-{time.monotonic_ns()}",
            protocol=protocol,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set(
                ca_certs=str(broker.ca),
                certfile=str(cert) if cert else None,
                keyfile=str(cert.with_suffix(".key")) if cert else None,
            )
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc.value)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put([rc.value for rc in rcs])
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, bool(m.retain)))
        self.port = broker.tls_port if tls else broker.local_port

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: mqtt.ReasonCode, props: object) -> None:
        with self._acked:
            self.pubacks[mid] = rc.value
            self._acked.notify_all()

    def connect(self, timeout: float = WAIT) -> int:
        """The CONNACK reason code (0 = accepted), or -1 if the broker answered none."""
        try:
            self.client.connect("127.0.0.1", self.port)
        except (OSError, ssl.SSLError):
            return -1  # e.g. the TLS handshake failed
        self.client.loop_start()
        try:
            return self.connack.get(timeout=timeout)
        except queue.Empty:
            return -1

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish with QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.pubacks, WAIT), f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT)

    def next_message(self, timeout: float = WAIT) -> tuple[str, bytes, bool]:
        return self.messages.get(timeout=timeout)

    def drain(self, quiet: float = 0.5, first: float = 5.0) -> set[tuple[str, bytes]]:
        """Every (topic, payload) received until nothing more arrives for ``quiet`` seconds, the
        first given ``first`` seconds (under load the broker's first delivery can take longer
        than ``quiet``; a drain that must stay empty waits that long for nothing)."""
        seen = set()
        try:
            seen.add(self.next_message(timeout=first)[:2])
            while True:
                seen.add(self.next_message(timeout=quiet)[:2])
        except queue.Empty:
            return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connect(broker: Broker) -> Iterator:
    opened: list[Client] = []

    def open_client(user: str, **kwargs: object) -> Client:
        client = Client(broker, user, broker.passwords[user], **kwargs)  # type: ignore[arg-type]
        opened.append(client)
        code = client.connect()
        assert code == 0, f"{user}: CONNACK {code:#x}"
        return client

    yield open_client
    for client in opened:
        client.close()


# --- the tests ------------------------------------------------------------------------------------


def test_anonymous_and_wrong_passwords_are_refused(broker: Broker) -> None:
    for port_kwargs in ({}, {"tls": True}):
        for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
            anonymous = Client(broker, None, protocol=protocol, **port_kwargs)  # type: ignore[arg-type]
            assert anonymous.connect() == NOT_AUTHORIZED
            anonymous.close()
    wrong = Client(broker, "gw-1", "not-the-password")
    assert wrong.connect() in (NOT_AUTHORIZED, 0x86)  # 0x86 "Bad user name or password"
    wrong.close()
    stranger = Client(broker, "gw-3", broker.passwords["gw-1"])  # a valid password, another user
    assert stranger.connect() in (NOT_AUTHORIZED, 0x86)
    stranger.close()


def test_a_device_writes_only_its_own_topics(broker: Broker, connect) -> None:
    backend = connect(BACKEND_USER)
    assert backend.subscribe(SHARED_READINGS) == [1]
    backend.subscribe("meterchain/v1/+/telemetry")
    backend.subscribe("meterchain/v1/+/ocmf")
    gw1 = connect("gw-1")

    for topic in (readings_topic("gw-1"), telemetry_topic("gw-1"), status_topic("gw-1"),
                  ocmf_topic("gw-1")):
        assert gw1.publish(topic, b"own") in ACCEPTED, topic
    # Another device's topics, the backend's ack, topics outside the scheme, wildcard-like ids.
    for topic in (
        readings_topic("gw-2"), telemetry_topic("gw-2"), status_topic("gw-2"), ocmf_topic("gw-2"),
        ack_topic("gw-1"), "meterchain/v1/gw-1/receipts", "meterchain/v1/gw-1/readings/extra",
        "meterchain/v1/gw-1", "meterchain/v2/gw-1/readings", "$SYS/broker/uptime", "other",
    ):
        assert gw1.publish(topic, b"forged") == NOT_AUTHORIZED, topic

    received = {backend.next_message()[:2] for _ in range(3)}
    assert received == {(readings_topic("gw-1"), b"own"), (telemetry_topic("gw-1"), b"own"),
                        (ocmf_topic("gw-1"), b"own")}
    with pytest.raises(queue.Empty):  # the forged gw-2 reading never reached the backend
        backend.next_message(timeout=0.3)


def test_backend_workers_share_readings_and_statuses_and_each_gets_every_ocmf(
    broker: Broker, connect
) -> None:
    """The subscriptions of ``serve --share-group`` (backend/ingest/worker.py) under this ACL: each
    reading and status reaches one of two workers, every OCMF record both. A device that joins
    the group reads nothing (docs/deploy.md, "Scale-out", says what its turns cost the group)."""
    group = "ingest-test"
    workers = [connect(BACKEND_USER), connect(BACKEND_USER)]
    for worker in workers:
        for topic_filter in subscriptions(group):
            assert worker.subscribe(topic_filter) == [1], topic_filter
    gw1 = connect("gw-1")
    for n in range(4):
        for topic in (readings_topic("gw-1"), status_topic("gw-1")):
            assert gw1.publish(topic, b"%d" % n) in ACCEPTED
    assert gw1.publish(ocmf_topic("gw-1"), b"record") in ACCEPTED
    seen = [worker.drain() for worker in workers]
    for topic in (readings_topic("gw-1"), status_topic("gw-1")):
        first, second = ({payload for t, payload in got if t == topic} for got in seen)
        assert first and second and not first & second and first | second == {b"0", b"1", b"2", b"3"}
    assert all((ocmf_topic("gw-1"), b"record") in got for got in seen)

    intruder = connect("gw-2")
    assert intruder.subscribe(f"$share/{group}/meterchain/v1/+/readings") == [1]  # granted...
    for n in range(4):
        assert gw1.publish(readings_topic("gw-1"), b"%d" % n) in ACCEPTED
    assert intruder.drain() == set()  # ...but the read ACL lets nothing through


def test_a_device_reads_only_its_own_acks(broker: Broker, connect) -> None:
    backend = connect(BACKEND_USER)
    assert backend.publish(ack_topic("gw-1"), b"ack for gw-1", retain=True) in ACCEPTED
    assert backend.publish(ack_topic("gw-2"), b"ack for gw-2", retain=True) in ACCEPTED
    assert backend.publish("meterchain/v1/gw-2/receipts", b"receipt for gw-2") in ACCEPTED

    gw2 = connect("gw-2")
    # Mosquitto grants these subscriptions but filters every message gw-2 may not read:
    # first another device's ack, a wildcard over all acks, then its own ack as a sentinel.
    gw2.subscribe(ack_topic("gw-1"))
    gw2.subscribe("meterchain/v1/+/ack")
    gw2.subscribe("meterchain/v1/#")
    gw2.subscribe(ack_topic("gw-2"))
    # Overlapping subscriptions deliver a message once per match: compare sets.
    assert gw2.drain() == {(ack_topic("gw-2"), b"ack for gw-2")}

    # Live acks too: the backend acks gw-1 again; gw-1 gets it, gw-2 (subscribed to it) does not.
    gw1 = connect("gw-1")
    gw1.subscribe(ack_topic("gw-1"))
    assert gw1.next_message() == (ack_topic("gw-1"), b"ack for gw-1", True)
    assert backend.publish(ack_topic("gw-1"), b"second ack for gw-1", retain=True) in ACCEPTED
    assert gw1.next_message() == (ack_topic("gw-1"), b"second ack for gw-1", False)
    assert backend.publish(ack_topic("gw-2"), b"second ack for gw-2", retain=True) in ACCEPTED
    assert gw2.drain() == {(ack_topic("gw-2"), b"second ack for gw-2")}


def test_a_device_reads_only_its_own_receipts(broker: Broker, connect) -> None:
    """Receipts (backend/log/receipts.py) are retained on each device's topic: the backend writes
    them, the device reads its own, another device reads none and writes none."""
    backend = connect(BACKEND_USER)
    assert backend.publish(receipt_topic("gw-1"), b"receipt for gw-1", retain=True) in ACCEPTED
    assert backend.publish(receipt_topic("gw-2"), b"receipt for gw-2", retain=True) in ACCEPTED
    gw2 = connect("gw-2")
    assert gw2.publish(receipt_topic("gw-2"), b"forged") == NOT_AUTHORIZED
    assert gw2.publish(receipt_topic("gw-1"), b"forged") == NOT_AUTHORIZED
    gw2.subscribe(receipt_topic("gw-1"))
    gw2.subscribe("meterchain/v1/+/receipts")
    gw2.subscribe(receipt_topic("gw-2"))
    assert gw2.drain() == {(receipt_topic("gw-2"), b"receipt for gw-2")}
    gw1 = connect("gw-1")
    gw1.subscribe(receipt_topic("gw-1"))
    assert gw1.next_message() == (receipt_topic("gw-1"), b"receipt for gw-1", True)


def test_the_backend_cannot_forge_readings_and_reads_status(broker: Broker, connect) -> None:
    backend = connect(BACKEND_USER)
    assert backend.publish(readings_topic("gw-1"), b"forged by the backend") == NOT_AUTHORIZED
    backend.subscribe("meterchain/v1/+/status")
    gw2 = connect("gw-2")
    assert gw2.publish(status_topic("gw-2"), b"online") in ACCEPTED
    assert backend.next_message()[:2] == (status_topic("gw-2"), b"online")


def test_tls_listener_with_passwords(broker: Broker, connect) -> None:
    gw1 = connect("gw-1", tls=True)
    assert gw1.publish(readings_topic("gw-1"), b"over tls") in ACCEPTED
    assert gw1.publish(readings_topic("gw-2"), b"over tls") == NOT_AUTHORIZED
    # Plain MQTT on the TLS port gets no CONNACK.
    plain = Client(broker, "gw-1", broker.passwords["gw-1"])
    plain.port = broker.tls_port
    assert plain.connect(timeout=1) == -1
    plain.close()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    reader = sock.makefile("rb")
    kind = reader.read(1)[0]
    length, shift = 0, 0
    while True:
        byte = reader.read(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return kind, reader.read(length)


def test_oversized_messages_are_answered_packet_too_large(broker: Broker) -> None:
    # A raw MQTT 5 exchange: paho-mqtt 2.2 cannot parse Mosquitto's PUBACK for this case
    # ("Received malformed packet") and drops the connection instead of reporting the code.
    with socket.create_connection(("127.0.0.1", broker.local_port), timeout=WAIT) as sock:
        connect_body = (
            _utf8("MQTT") + bytes([5, 0xC2]) + (60).to_bytes(2, "big") + b"\0"
            + _utf8("gw-1-raw") + _utf8("gw-1") + _utf8(broker.passwords["gw-1"])
        )
        sock.sendall(_packet(0x10, connect_body))
        kind, body = _read_packet(sock)
        assert kind == 0x20 and body[1] == 0  # CONNACK, success
        payload = b"x" * 70_000  # above message_size_limit (65536), below max_packet_size
        sock.sendall(_packet(0x32, _utf8(readings_topic("gw-1")) + (7).to_bytes(2, "big") + b"\0" + payload))
        kind, body = _read_packet(sock)
        assert kind == 0x40 and body[:2] == (7).to_bytes(2, "big")
        assert body[2] == 0x95  # PUBACK "Packet too large": refused, not forwarded


def test_client_certificates_name_the_device(tmp_path: Path) -> None:
    broker = _start(_mosquitto_or_skip(), tmp_path, client_certs=True)
    try:
        workdir = broker.conf_dir.parent
        gw1 = Client(broker, None, tls=True, cert=workdir / "gw-1.crt")
        assert gw1.connect() == 0
        assert gw1.publish(readings_topic("gw-1"), b"signed in by certificate") in ACCEPTED
        assert gw1.publish(readings_topic("gw-2"), b"forged") == NOT_AUTHORIZED
        gw1.close()
        no_cert = Client(broker, "gw-1", broker.passwords["gw-1"], tls=True)
        assert no_cert.connect(timeout=1) != 0  # the TLS handshake fails without a client certificate
        no_cert.close()
    finally:
        _stop(broker)
