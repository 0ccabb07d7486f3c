"""Sequence reservation: no sequence number signed twice, even when the outbox is lost (issue 14).

The outbox's counter lives in the outbox; a deleted or corrupt outbox used to restart it at 1
(or at an ack's word), re-signing sequence numbers whose first readings the backend held. Now,
before it signs, the agent durably reserves a block of sequence numbers in a small file beside
its key (``<key>.seq``; written to a temporary file, fsynced, renamed over, the folder fsynced):

- a cycle whose sequence numbers pass the reservation first moves it ``BLOCK`` further, and only
  then signs (so every signed sequence is ≤ the reserved one on disk);
- an outbox that is missing or unreadable while the reservation says sequences were reserved is
  *lost*: the agent resumes above the reservation and declares the range it can no longer
  account for, ``acked + 1 .. reserved`` (``acked``: the highest sequence acknowledged when the
  reservation was last written), in a gap declaration signed by the device key
  (contract/gap.py); a corrupt outbox file is moved aside, never deleted;
- a reservation file that is missing beside an outbox (an agent older than this) is made from
  the outbox's counter.

The file is JSON: ``{"v": 1, "device": …, "reserved": R, "acked": A}``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from meterchain.contract.errors import MeterchainError

log = logging.getLogger(__name__)

#: Sequence numbers reserved at a time: one fsynced write per BLOCK readings signed.
BLOCK = 256
VERSION = 1


class ReservationError(MeterchainError):
    """The reservation file is unreadable or belongs to another device."""

    check = "reservation"


def reservation_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".seq")


@dataclass
class Reservation:
    path: Path
    device: str
    reserved: int = 0
    acked: int = 0

    @classmethod
    def load(cls, path: Path, device: str) -> Reservation | None:
        """The reservation on disk, or None if there is none yet."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ReservationError(
                f"sequence reservation {path} is unreadable ({exc}); restore it from the "
                "gateway's backup with its key, or provision the gateway again", path=str(path)
            ) from None
        if not isinstance(data, dict) or data.get("v") != VERSION or not all(
            isinstance(data.get(k), int) and data[k] >= 0 for k in ("reserved", "acked")
        ):
            raise ReservationError(f"sequence reservation {path} is not a version-{VERSION} "
                                   "reservation", path=str(path))
        if data.get("device") != device:
            raise ReservationError(
                f"sequence reservation {path} belongs to device {data.get('device')!r}, not "
                f"{device!r}", path=str(path))
        return cls(path, device, int(data["reserved"]), int(data["acked"]))

    def covers(self, seq: int) -> bool:
        return seq <= self.reserved

    def extend(self, upto: int, acked: int, block: int = BLOCK) -> None:
        """Reserve at least up to ``upto`` (a block more), durably, before anything is signed."""
        if upto <= self.reserved:
            return
        self.reserved = upto - 1 + max(1, block)
        self.acked = max(self.acked, acked)
        self.save()
        log.info("event=seq_reserved device=%s reserved=%d acked=%d", self.device,
                 self.reserved, self.acked)

    def save(self) -> None:
        """Write beside, fsync, rename over, fsync the folder: the old or the new, never half."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"v": VERSION, "device": self.device, "reserved": self.reserved,
                           "acked": self.acked}, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
