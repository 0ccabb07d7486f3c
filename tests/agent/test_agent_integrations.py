"""The agent's integrations: Home Assistant from config, the systemd notify protocol, MQTT over TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import socket
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest
from meterchain.agent.config import ConfigError, load_config
from meterchain.mqtt import TlsFiles
from meterchain.mqtt.broker import RunningBroker, find_mosquitto, free_port

from tests.support.agent import (
    DEVICE,
    Gateway,
    VerifyingBackend,
    broker_client,
    running,
    start_gateway,
    wait_until,
)


@pytest.fixture
async def gateway(tmp_path: Path, broker: RunningBroker):  # type: ignore[no-untyped-def]
    gw = await start_gateway(tmp_path, broker.url)
    try:
        yield gw
    finally:
        await gw.bus.stop()


def _with(gateway: Gateway, **changes: object) -> Gateway:
    return dataclasses.replace(gateway, config=dataclasses.replace(gateway.config, **changes))


def _config_text(gateway: Gateway) -> Path:
    return gateway.config.key_path.parent / "agent.toml"


async def test_home_assistant_sees_the_meters_when_one_line_turns_it_on(
    gateway: Gateway, broker: RunningBroker
) -> None:
    path = _config_text(gateway)
    path.write_text(f'homeassistant_url = "{broker.url}"\n' + path.read_text())
    gw = _with(gateway, homeassistant=load_config(path).homeassistant)
    assert gw.config.homeassistant is not None
    seen: dict[str, bytes] = {}

    async def listen() -> None:
        async with broker_client(broker.url, "ha-test") as client:
            await client.subscribe("homeassistant/#", qos=1)
            async for message in client.messages:
                seen[message.topic.value] = bytes(message.payload)

    backend = VerifyingBackend(broker.url, {DEVICE: gw.spki})
    async with running(listen), running(backend.run), running(gw.agent().run):
        await wait_until(
            lambda: sum(1 for t in seen if t.endswith("/config")) >= 4
            and sum(1 for t in seen if t.endswith("/state")) >= 2,
            30,
            "discovery and state of both meters",
        )
    configs = [json.loads(v) for t, v in seen.items() if t.endswith("/config") and v]
    energy = [c for c in configs if c.get("device_class") == "energy"]
    assert len(energy) == 4  # import and export of both meters
    assert all(c["state_class"] == "total_increasing" and c["unit_of_measurement"] == "kWh" for c in energy)
    assert {c["device"]["serial_number"] for c in energy} == {"630001", "120002"}
    states = [json.loads(v) for t, v in seen.items() if t.endswith("/state")]
    assert all(isinstance(s, dict) and s for s in states)


def test_home_assistant_is_off_by_default_and_its_section_needs_the_url(gateway: Gateway) -> None:
    assert gateway.config.homeassistant is None
    path = _config_text(gateway)
    path.write_text(path.read_text() + '\n[homeassistant]\ndiscovery_prefix = "ha"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.context["key"] == "homeassistant_url"


async def test_agent_tells_systemd_it_is_ready_and_stopping(
    gateway: Gateway, broker: RunningBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(receiver.recv(4096).decode())
            except BlockingIOError:
                return

    backend = VerifyingBackend(broker.url, {DEVICE: gateway.spki})
    async with running(backend.run), running(gateway.agent().run):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages):
            await asyncio.sleep(0.1)
            drain()
    drain()
    receiver.close()
    assert any(m.startswith("READY=1") for m in messages), messages
    assert any("WATCHDOG=1" in m for m in messages), messages
    assert any("STOPPING=1" in m for m in messages), messages


def test_mqtts_urls_take_tls_settings(gateway: Gateway) -> None:
    path = _config_text(gateway)
    text = path.read_text()
    ca = path.parent / "ca.crt"
    ca.write_text("placeholder")
    path.write_text(
        text.replace('url = "mqtt://', 'ca_file = "ca.crt"\nurl = "mqtts://').replace(
            ":" + str(gateway.config.broker.address.port), ""
        )
    )
    config = load_config(path)
    assert config.broker.address.tls == TlsFiles(ca_file=ca)
    assert config.broker.address.port == 8883 and config.broker.url.startswith("mqtts://")
    path.write_text(text.replace('url = "mqtt://', 'ca_file = "ca.crt"\nurl = "mqtt://'))
    with pytest.raises(ConfigError, match="mqtts"):
        load_config(path)


@pytest.mark.skipif(find_mosquitto() is None, reason="needs Mosquitto for a TLS listener")
async def test_agent_publishes_over_tls(gateway: Gateway, tmp_path: Path) -> None:
    from tests.support.tls import cert as _cert
    from tests.support.tls import key as _key
    from tests.support.tls import write_pem as _write_pem

    ca_key, server_key = _key(), _key()
    ca_cert = _cert("meterchain test CA", ca_key, None, ca=True)
    _write_pem(tmp_path / "ca.crt", ca_cert)
    _write_pem(
        tmp_path / "server.crt", _cert("localhost", server_key, ("meterchain test CA", ca_key), server=True), server_key
    )
    plain, tls = free_port(), free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"per_listener_settings false\nallow_anonymous true\nuser {getpass.getuser()}\n"
        f"listener {plain} 127.0.0.1\n"
        f"listener {tls} 127.0.0.1\ncafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\n"
        f"keyfile {tmp_path / 'server.key'}\n"
    )
    proc = subprocess.Popen([find_mosquitto() or "", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        for port in (plain, tls):
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, proc.stderr.read() if proc.stderr else b""
                    await asyncio.sleep(0.05)
        path = _config_text(gateway)
        text = path.read_text().replace(
            f'url = "mqtt://127.0.0.1:{gateway.config.broker.address.port}"',
            f'url = "mqtts://localhost:{tls}"\nca_file = "{tmp_path / "ca.crt"}"',
        )
        path.write_text(text)
        gw = _with(gateway, broker=load_config(path).broker)
        assert gw.config.broker.address.tls is not None
        backend = VerifyingBackend(f"mqtt://127.0.0.1:{plain}", {DEVICE: gw.spki})
        async with running(backend.run), running(gw.agent().run):
            await wait_until(lambda: backend.upto(DEVICE) >= 2, 30, "readings over TLS")
        # A client that does not trust the CA cannot connect.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("localhost", tls, tls_params=aiomqtt.TLSParameters(), timeout=3):
                pass
    finally:
        proc.terminate()
        proc.wait(5)
