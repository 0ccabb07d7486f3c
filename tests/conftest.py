"""Shared fixtures: a real MQTT broker per test (Mosquitto where installed, amqtt otherwise)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings
from meterchain.mqtt.broker import RunningBroker, start_broker

# scripts/coverage runs with --hypothesis-profile=coverage: traced code runs several times slower, so
# hypothesis's per-example deadline (200 ms) would fail examples for the tracing, not for the code.
settings.register_profile("coverage", deadline=None)
# Every run: no per-example deadline either. Timing belongs in bench/, and a 200 ms deadline failed
# property tests on a loaded CI machine for the load, not for the code (--hypothesis-profile overrides).
settings.register_profile("meterchain", deadline=None)
settings.load_profile("meterchain")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``MC_FAST=1`` deselects the tests marked ``slow`` (the longer property and crash runs)."""
    if os.environ.get("MC_FAST") != "1":
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[RunningBroker]:
    """A broker of its own on a free loopback port, stopped after the test."""
    running = await start_broker(workdir=tmp_path / "broker")
    try:
        yield running
    finally:
        await running.stop()


# --- a small, real log for contract tests -------------------------------------------------------

from tests.support.contract import SmallLog, build_small_log  # noqa: E402


@pytest.fixture(scope="session")
def small_log() -> SmallLog:
    return build_small_log()


# --- a store of each kind: SQLite in tmp_path, PostgreSQL in a fresh schema (MC_PG_DSN) ----------

from tests.support.store import StoreFactory, postgres_location  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """The same test against SqliteStore and PostgresStore (skipped without MC_PG_DSN)."""
    if request.param == "sqlite":
        yield StoreFactory("sqlite", str(tmp_path / "mc.db"))
        return
    async with postgres_location() as location:
        yield StoreFactory("postgres", location)


@pytest.fixture
async def any_store(store_factory: StoreFactory):  # type: ignore[no-untyped-def]
    """One open store of each kind, closed after the test."""
    store = await store_factory.open()
    try:
        yield store
    finally:
        await store.close()
