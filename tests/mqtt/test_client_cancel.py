"""A stop (cancellation) that comes in the loop turn an MQTT acknowledgement arrives stops the caller.

aiomqtt bounds every wait for a CONNACK, SUBACK or PUBACK with asyncio.wait_for, which on Python
3.11 hands back the result instead of the cancellation when both come in one turn: an agent's
status loop, stopped as its PUBACK came, published on, and the agent's shutdown hung (seen in
test_agent_dlms at load 8-10: 'the task did not stop within 30 s of its cancellation').
"""

from __future__ import annotations

import asyncio
import time

import pytest
from meterchain.mqtt import MqttError
from meterchain.mqtt._client import _Client


async def test_a_wait_cancelled_as_its_acknowledgement_arrives_is_cancelled() -> None:
    client = _Client("127.0.0.1")
    acknowledged = asyncio.Event()
    task = asyncio.create_task(client._wait_for(acknowledged.wait(), timeout=30))
    deadline = time.monotonic() + 30
    while not acknowledged._waiters:  # type: ignore[attr-defined]  # the wait has begun
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    acknowledged.set()
    task.cancel()  # the same turn
    await asyncio.wait({task}, timeout=10)
    assert task.cancelled(), f"the wait returned after its cancellation: {task}"


async def test_a_wait_past_its_bound_is_aiomqtts_timeout() -> None:
    client = _Client("127.0.0.1")
    with pytest.raises(MqttError, match="Operation timed out"):
        await client._wait_for(asyncio.Event().wait(), timeout=0.05)
