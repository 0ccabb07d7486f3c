"""Shared by several test modules (moved here from test_agent_config.py, so no test imports another)."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = """
device_id = "gw-0001"
key_path = "device.key"
backend_url = "https://backend.example:8000"
interval_seconds = 300
ack_timeout_seconds = 90
outbox_path = "state/outbox.sqlite"

[broker]
url = "mqtt://gw-0001:s3cret@broker.example:8883"
max_inflight = 50

[[meters]]
name = "house"
model = "sdm630"
port = "/dev/ttyUSB0"
baudrate = 9600
modbus_id = 1

[[meters]]
name = "heat-pump"
model = "sdm120"
port = "/dev/ttyUSB0"
baudrate = 9600
modbus_id = 2
serial = "SDM120-77"
timeout_seconds = 0.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path
