"""The agent's TOML config: a full example parses; every bad key is named with its file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from meterchain.agent.cli import write_private_key
from meterchain.agent.config import ConfigError, load_config
from meterchain.agent.service import Agent
from meterchain.cli.main import app
from meterchain.contract.signing import generate_private_key_pem, key_id, load_signer
from typer.testing import CliRunner

from tests.support.agent_config import EXAMPLE, write
from tests.support.paths import REPO_ROOT


def test_the_documented_example_parses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.device_id == "gw-0001"
    assert config.key_path == tmp_path / "device.key"
    assert config.outbox_path == tmp_path / "state" / "outbox.sqlite"
    assert (config.interval_seconds, config.ack_timeout_seconds) == (300, 90)
    broker = config.broker.address
    assert (broker.host, broker.port, broker.username, broker.password) == (
        "broker.example",
        8883,
        "gw-0001",
        "s3cret",
    )
    assert config.broker.url == "mqtt://broker.example:8883"  # no password in logs
    assert "s3cret" not in repr(config.broker)
    assert [m.name for m in config.meters] == ["house", "heat-pump"]
    assert config.meters[1].serial == "SDM120-77" and config.meters[1].timeout_seconds == 0.5


def test_the_docs_example_is_the_tested_one() -> None:
    docs = (REPO_ROOT / "docs" / "agent.md").read_text()
    assert EXAMPLE.strip() in docs


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('device_id = "gw-0001"', 'device_id = "gw/0001"', "device_id"),
        ('device_id = "gw-0001"\n', "", "device_id"),
        ("interval_seconds = 300", "interval_seconds = 7", "interval_seconds"),
        ("interval_seconds = 300", 'interval_seconds = "300"', "interval_seconds"),
        ("ack_timeout_seconds = 90", "ack_timeout_seconds = 0", "ack_timeout_seconds"),
        ('backend_url = "https://', 'backend_url = "ftp://', "backend_url"),
        ('url = "mqtt://gw-0001', 'url = "http://gw-0001', "broker.url"),
        ("max_inflight = 50", "max_inflight = true", "broker.max_inflight"),
        ('model = "sdm120"', 'model = "sdm72"', "meters[1].model"),
        ("modbus_id = 2", "modbus_id = 248", "meters[1].modbus_id"),
        ("modbus_id = 2", "modbus_id = 1", "meters[1].modbus_id"),
        ('name = "heat-pump"', 'name = "house"', "meters[1].name"),
        ("baudrate = 9600\nmodbus_id = 2", "baudrate = 9601\nmodbus_id = 2", "meters[1].baudrate"),
        ("baudrate = 9600\nmodbus_id = 2", "baudrate = 2400\nmodbus_id = 2", "meters[1].baudrate"),
        ('serial = "SDM120-77"', 'serial = "has space"', "meters[1].serial"),
        ("timeout_seconds = 0.5", "timeout_seconds = 99", "meters[1].timeout_seconds"),
        (
            'port = "/dev/ttyUSB0"\nbaudrate = 9600\nmodbus_id = 1',
            "baudrate = 9600\nmodbus_id = 1",
            "meters[0].port",
        ),
        ("[broker]", "colour = 1\n[broker]", "colour"),
    ],
)
def test_a_bad_value_names_the_key_and_the_file(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    assert old in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.context["key"] == key
    assert str(path) in str(info.value) and key in str(info.value)


def test_no_meters_and_not_toml_and_no_file(tmp_path: Path) -> None:
    head = EXAMPLE.split("[[meters]]")[0]
    with pytest.raises(ConfigError, match="meters: required key is missing"):
        load_config(write(tmp_path, head))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = "))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


def test_keygen_writes_an_owner_only_key_and_prints_its_id(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "device.key"
    runner = CliRunner()
    old_umask = os.umask(0)  # even a permissive umask must not widen the key's mode
    try:
        result = runner.invoke(app, ["agent", "keygen", "--out", str(out)])
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    spki = load_signer(out.read_bytes()).public_key_der
    assert f"key id: {key_id(spki).hex()}" in result.output
    assert "-----BEGIN PUBLIC KEY-----" in result.output

    again = runner.invoke(app, ["agent", "keygen", "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output
    assert load_signer(out.read_bytes()).public_key_der == spki

    forced = runner.invoke(app, ["agent", "keygen", "--out", str(out), "--force"])
    assert forced.exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert load_signer(out.read_bytes()).public_key_der != spki
    assert sorted(p.name for p in out.parent.iterdir()) == ["device.key"]


def test_run_with_a_bad_config_exits_with_the_key_named(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.replace("interval_seconds = 300", "interval_seconds = 7"))
    result = CliRunner().invoke(app, ["agent", "run", "--config", str(path)])
    assert result.exit_code == 2
    assert "interval_seconds" in result.output


def test_an_agent_is_built_from_a_config_outside_the_event_loop(tmp_path: Path) -> None:
    """`agent run` builds the Agent before asyncio.run; Modbus clients must wait for the loop."""
    config = load_config(write(tmp_path, EXAMPLE))
    write_private_key(config.key_path, generate_private_key_pem(), force=False)
    agent = Agent(config)
    assert agent.sources == [] and agent.signer.public_key_der
