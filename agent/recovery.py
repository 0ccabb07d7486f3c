"""Open the outbox beside the sequence reservation; account for a lost one (issue 14).

See agent/reservation.py for the rules. :func:`open_outbox` is what ``Agent.run`` calls:

- a corrupt outbox is moved aside (``<outbox>.corrupt-<time>``, with its ``-wal``/``-shm``),
  never deleted, and a new one is made;
- a new outbox where sequences were reserved resumes at ``reserved + 1`` and stores a signed gap
  declaration of ``acked + 1 .. reserved`` (split into spans of at most ``MAX_GAP_SPAN``), which
  the publisher sends until an ack covers it;
- an outbox without a reservation file (an older agent) gets one from its counter.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from meterchain.agent.outbox import Outbox, OutboxCorrupt
from meterchain.agent.reservation import BLOCK, Reservation, reservation_path
from meterchain.contract.gap import MAX_GAP_SPAN, GapDeclaration
from meterchain.contract.signing import Signer, key_id

log = logging.getLogger(__name__)


def move_aside(path: Path, now: float | None = None) -> Path:
    """Keep an unreadable outbox for inspection under a new name; returns it."""
    stamp = int(time.time() if now is None else now)
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target


async def open_outbox(path: Path, device: str, signer: Signer, key_path: Path, *,
                      companion: Callable[[bytes], str | None] | None = None,
                      now: float | None = None,
                      on_gap: Callable[[int, int, str], None] | None = None) -> Outbox:
    """The outbox, its reservation attached, after accounting for a lost or corrupt one."""
    reservation = Reservation.load(reservation_path(key_path), device)
    why = "outbox-lost"
    try:
        outbox = await Outbox.open(path, device, companion)
    except OutboxCorrupt as exc:
        moved = move_aside(path, now)
        log.error("event=outbox_corrupt device=%s moved_to=%s detail=%s", device, moved, exc)
        why = "outbox-corrupt"
        outbox = await Outbox.open(path, device, companion)
    try:
        when = int(time.time() if now is None else now)
        if reservation is None:  # first start, or an agent from before reservations
            reservation = Reservation(reservation_path(key_path), device,
                                      await outbox.next_seq() - 1, await outbox.acked_upto())
            reservation.save()
        elif outbox.created and reservation.reserved > 0:
            gaps = []
            first = reservation.acked + 1
            kid = key_id(signer.public_key_der)
            while first <= reservation.reserved:
                last = min(reservation.reserved, first + MAX_GAP_SPAN - 1)
                message = GapDeclaration(device, kid, first, last, when, why).sign(signer)
                gaps.append((first, last, message.to_cbor()))
                first = last + 1
            await outbox.resume_after_loss(reservation.reserved + 1, gaps, when)
            log.error("event=outbox_lost device=%s why=%s resume_at=%d declared=%s", device, why,
                      reservation.reserved + 1,
                      ",".join(f"{a}-{b}" for a, b, _ in gaps) or "none")
            for a, b, _ in gaps:
                if on_gap is not None:
                    on_gap(a, b, why)
        elif reservation.reserved < await outbox.next_seq() - 1:  # a stale reservation backup
            reservation.extend(await outbox.next_seq() - 1, await outbox.acked_upto(), block=1)
        # A block ahead now, at start, so the first poll cycles sign without waiting for an fsync
        # (an accelerated or busy gateway would miss an interval boundary meanwhile).
        nxt = await outbox.next_seq()
        if reservation.reserved < nxt - 1 + BLOCK // 2:
            reservation.extend(reservation.reserved + 1, await outbox.acked_upto())
        outbox.reservation = reservation
    except BaseException:
        await outbox.close()
        raise
    return outbox
