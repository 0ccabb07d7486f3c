"""The backend's database full (issue 18): ingest holds its batch, acks nothing new, keeps what is
committed, says so with the fix, and commits the held batch once there is space again."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from meterchain.backend.ingest import worker
from meterchain.backend.ingest.worker import STORE_FULL, StoreFull, is_store_full

from tests.support.backend import Gateway, backend, close


def test_a_full_store_is_told_apart_from_other_errors() -> None:
    assert is_store_full(sqlite3.OperationalError("database or disk is full"))
    assert is_store_full(OSError(28, "No space left on device"))
    assert is_store_full(StoreFull("full"))
    assert not is_store_full(sqlite3.OperationalError("database is locked"))

    class DiskFullError(Exception):  # asyncpg's, by its SQLSTATE
        sqlstate = "53100"

    assert is_store_full(DiskFullError())


async def test_ingest_holds_the_batch_while_full_and_commits_it_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(worker, "FULL_RETRY_SECONDS", 0.01)
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    try:
        first = await ingest.process([gw.message(1)])
        assert first.stored == 1
        real = ingest.store.commit_batch
        attempts = 0

        async def full_then_fine(*args: Any, **kwargs: Any) -> Any:
            nonlocal attempts
            attempts += 1
            if attempts <= 3:
                raise sqlite3.OperationalError("database or disk is full")
            return await real(*args, **kwargs)

        monkeypatch.setattr(ingest.store, "commit_batch", full_then_fine)
        messages = [gw.message(2), gw.message(3)]
        checked, version = await ingest.check(messages)
        with caplog.at_level(logging.ERROR, logger="meterchain.backend.ingest.worker"):
            held = asyncio.create_task(ingest.until_space(
                lambda: ingest.commit(messages, checked, version)))
            while attempts < 2:
                await asyncio.sleep(0.005)
            assert STORE_FULL._value.get() == 1 and not held.done()
            assert await api.reading("gw-1", 1) is not None  # committed stays readable
            report = await asyncio.wait_for(held, 10)
        errors = [r.getMessage() for r in caplog.records if "event=store_full" in r.getMessage()]
        assert len(errors) == 1 and "free space" in errors[0]  # once, with the fix
        assert report.stored == 2 and report.acks[0].upto == 3
        assert STORE_FULL._value.get() == 0
    finally:
        await close(admin, ingest, sealer, api)
