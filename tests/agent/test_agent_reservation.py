"""Sequence reservation and a lost outbox (issue 14): no sequence signed twice, every one
accounted for by a signed gap declaration, a corrupt outbox kept aside."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from meterchain.agent.outbox import CycleEntry, OutboxUnavailable
from meterchain.agent.recovery import open_outbox
from meterchain.agent.reservation import BLOCK, Reservation, ReservationError, reservation_path
from meterchain.backend.ingest.checks import check_message
from meterchain.contract.ack import Ack, readings_topic
from meterchain.contract.gap import GapMessage
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf
from meterchain.contract.signing import generate_private_key_pem, load_signer

DEVICE = "gw-r"
SIGNER = load_signer(generate_private_key_pem())


def _entry(end: int) -> CycleEntry:
    return CycleEntry("m1", end, lambda seq: f"m1|{end}|{seq}".encode())


async def _open(tmp_path: Path, gaps: list[tuple[int, int, str]] | None = None):  # type: ignore[no-untyped-def]
    return await open_outbox(tmp_path / "outbox.sqlite", DEVICE, SIGNER, tmp_path / "device.key",
                             now=1_000, on_gap=None if gaps is None else lambda a, b, why: gaps.append((a, b, why)))


def _reserved(tmp_path: Path) -> dict[str, int]:
    return json.loads(reservation_path(tmp_path / "device.key").read_text())  # type: ignore[no-any-return]


async def test_sequences_are_reserved_on_disk_before_they_are_signed(tmp_path: Path) -> None:
    outbox = await _open(tmp_path)
    seen: list[tuple[int, int]] = []

    def sign(seq: int) -> bytes:  # what the file says while the reading is signed
        seen.append((seq, _reserved(tmp_path)["reserved"]))
        return b"x%d" % seq

    try:
        assert _reserved(tmp_path)["reserved"] == BLOCK  # a block ahead, reserved at start
        await outbox.append_cycle([CycleEntry("m1", 900, sign)], now=1)
        assert seen == [(1, BLOCK)]
        for i in range(2, BLOCK + 2):
            await outbox.append_cycle([_entry(900 * i)], now=1)
        assert _reserved(tmp_path)["reserved"] == 2 * BLOCK  # one write per block
    finally:
        await outbox.close()


async def test_a_deleted_outbox_resumes_above_the_reservation_with_a_signed_gap(tmp_path: Path) -> None:
    gaps: list[tuple[int, int, str]] = []
    outbox = await _open(tmp_path, gaps)
    for i in range(1, 6):
        await outbox.append_cycle([_entry(900 * i)], now=1)
    await outbox.apply_ack(Ack(DEVICE, 2), now=2)
    for i in range(6, 8):  # the next block is reserved with acked = 2 on disk
        await outbox.append_cycle([_entry(900 * i)], now=1)
    await outbox.close()
    reservation = Reservation.load(reservation_path(tmp_path / "device.key"), DEVICE)
    assert reservation is not None and reservation.reserved == BLOCK
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"outbox.sqlite{suffix}").unlink(missing_ok=True)

    outbox = await _open(tmp_path, gaps)
    try:
        assert await outbox.next_seq() == BLOCK + 1  # never 1 again: no sequence signed twice
        assert gaps == [(1, BLOCK, "outbox-lost")]  # acked was 0 when the block was reserved
        (first, message), = await outbox.pending_gaps(now=1_000, republish_after=60)
        gap = GapMessage.from_cbor(message)
        assert (first, gap.declaration.first, gap.declaration.last) == (1, 1, BLOCK)
        # The backend's ingest accepts it as the device's own.
        leaf = DeviceLeaf(DEVICE, DeviceEvent.ENROL, SIGNER.public_key_der, 1, 0)
        checked = check_message(readings_topic(DEVICE), message, {DEVICE: [leaf]}, 1_000)
        assert checked.gap is not None and (checked.gap.first, checked.gap.last) == (1, BLOCK)
        assert await outbox.append_cycle([_entry(900 * 9)], now=3) == [BLOCK + 1]
        # An ack covering the range ends its republishing.
        await outbox.apply_ack(Ack(DEVICE, BLOCK), now=4)
        assert await outbox.gaps() == []
    finally:
        await outbox.close()


async def test_a_corrupt_outbox_is_moved_aside_and_declared(tmp_path: Path) -> None:
    gaps: list[tuple[int, int, str]] = []
    outbox = await _open(tmp_path, gaps)
    await outbox.append_cycle([_entry(900)], now=1)
    await outbox.close()
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"\x00garbage" * 512)
    outbox = await _open(tmp_path, gaps)
    try:
        assert gaps == [(1, BLOCK, "outbox-corrupt")]
        kept = list(tmp_path.glob("outbox.sqlite.corrupt-*"))
        assert kept and kept[0].read_bytes().startswith(b"\x00garbage")  # never deleted
        assert await outbox.next_seq() == BLOCK + 1
    finally:
        await outbox.close()


async def test_a_locked_outbox_is_waited_for_never_moved_aside(tmp_path: Path) -> None:
    """'database is locked' says nothing about the file's contents: taking it for corrupt would
    move unacknowledged readings aside and declare them a gap."""
    gaps: list[tuple[int, int, str]] = []
    outbox = await _open(tmp_path, gaps)
    await outbox.append_cycle([_entry(900)], now=1)
    await outbox.close()
    holder = sqlite3.connect(tmp_path / "outbox.sqlite")
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the file
        with pytest.raises(OutboxUnavailable, match="cannot be opened now"):
            await _open(tmp_path, gaps)
    finally:
        holder.close()
    assert not list(tmp_path.glob("outbox.sqlite.corrupt-*")) and gaps == []
    outbox = await _open(tmp_path, gaps)  # free again: the same outbox, its reading kept
    try:
        assert [r.seq for r in await outbox.fetch([1])] == [1] and gaps == []
    finally:
        await outbox.close()


def test_a_reservation_of_another_device_or_unreadable_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "device.key.seq"
    Reservation(path, "gw-other", 10, 0).save()
    with pytest.raises(ReservationError, match="belongs to device"):
        Reservation.load(path, DEVICE)
    path.write_text("{not json")
    with pytest.raises(ReservationError, match="unreadable"):
        Reservation.load(path, DEVICE)
    assert not path.with_name(path.name + ".tmp").exists()
