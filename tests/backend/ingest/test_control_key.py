"""The backend's control key (backend/ingest/control_key.py): made once by the sealer, logged as
a control-key leaf, rotated with an overlap, and signing every ack ingest publishes."""

from __future__ import annotations

from pathlib import Path

import pytest
from meterchain.backend.ingest.control_key import (
    ControlKeyError,
    load_or_create_control_key,
    public_control_key,
    read_control_keys,
    retire_previous,
    rotate_control_key,
)
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.store import open_store
from meterchain.contract.ack import Ack
from meterchain.contract.control import ACK_V2_TYPE, ControlKeyLeaf, SignedAck, open_control
from meterchain.contract.leaves import parse_leaf

ORIGIN = "test.example/log"


async def test_made_once_logged_rotated_and_retired(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "mc.db")
    path = tmp_path / "control.key"
    try:
        with pytest.raises(ControlKeyError, match="the sealer creates it"):
            await load_or_create_control_key(path, ORIGIN, store, create=False)
        (first,) = await load_or_create_control_key(path, ORIGIN, store, create=True)
        assert path.stat().st_mode & 0o777 == 0o600 and first.name == "test.example/control"
        again = await load_or_create_control_key(path, ORIGIN, store, create=True)
        assert [str(k.verifier) for k in again] == [str(first.verifier)]
        assert public_control_key(path) == str(first.verifier)
        second = await rotate_control_key(path, ORIGIN, store)
        assert [str(k.verifier) for k in read_control_keys(path)] == [
            str(second.verifier), str(first.verifier)]  # the new one signs first, the old beside
        with pytest.raises(ControlKeyError, match="rotation is still in progress"):
            await rotate_control_key(path, ORIGIN, store)
        leaves = [parse_leaf(data) for data in await store.control_leaves()]
        assert [(leaf.event, leaf.key) for leaf in leaves] == [  # type: ignore[union-attr]
            ("enrol", str(first.verifier)), ("rotate", str(second.verifier))]
        assert all(isinstance(leaf, ControlKeyLeaf) for leaf in leaves)
        assert retire_previous(path) and not retire_previous(path)
        assert [str(k.verifier) for k in read_control_keys(path)] == [str(second.verifier)]
    finally:
        await store.close()


async def test_ingest_signs_every_ack_with_the_control_keys(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "mc.db")
    path = tmp_path / "control.key"
    old = (await load_or_create_control_key(path, ORIGIN, store, create=True))[0]
    new = await rotate_control_key(path, ORIGIN, store)
    ingest = Ingest(store, control=read_control_keys(path))
    try:
        await ingest.acks.load(store, ["gw-1"])
        payload = ingest.ack_payload(Ack("gw-1", 0, (), 5))
        for key in (old, new):  # gateways that know either key verify it
            body, by = open_control(payload, ACK_V2_TYPE, [key.verifier])
            assert by == key.verifier
        ack = SignedAck.from_body(body)
        assert (ack.device, ack.upto, ack.keys) == ("gw-1", 0, (str(new.verifier),))
    finally:
        ingest.close()
        await store.close()


async def test_an_ingest_worker_waits_for_the_sealers_key(tmp_path: Path) -> None:
    import asyncio

    store = await open_store(tmp_path / "mc.db")
    path = tmp_path / "control.key"
    try:
        worker = asyncio.create_task(
            load_or_create_control_key(path, ORIGIN, store, create=False, wait=60))
        await asyncio.sleep(0.3)
        assert not worker.done()  # started before the sealer: waiting
        (made,) = await load_or_create_control_key(path, ORIGIN, store, create=True)
        (read,) = await asyncio.wait_for(worker, 60)  # it reads the key once it appears
        assert str(read.verifier) == str(made.verifier)
    finally:
        await store.close()
