"""Shared fixtures: a real MQTT broker per test (Mosquitto where installed, amqtt otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meterchain.backend.broker import RunningBroker, start_broker


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[RunningBroker]:
    """A broker of its own on a free loopback port, stopped after the test."""
    running = await start_broker(workdir=tmp_path / "broker")
    try:
        yield running
    finally:
        await running.stop()
