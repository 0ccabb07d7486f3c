"""Meter exchanges: a configured meter that reports a new serial is a new meter on that point.

The agent remembers each configured meter's last serial (``<outbox>.serials.json`` beside
the outbox). When a meter (by its config name, i.e. its place on the bus) answers with another
serial, the first reading of the new meter carries ``StatusFlag.METER_EXCHANGED`` and the change
is logged. Its registers start again near zero; consumers close the old meter at its last
reading and continue from this one (backend/settlement/netting/exchange.py), so an exchange is never read
as negative consumption.

The file is written after the cycle's outbox commit. A crash between the two flags the next
reading of the new meter again; an exchange whose serial equals the previous reading's is a
no-op for consumers, so the repeat is harmless. The other order could lose the flag.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from meterchain.contract.reading import StatusFlag

log = logging.getLogger(__name__)


class MeterSerials:
    """The last serial seen per configured meter name, kept on disk."""

    def __init__(self, path: Path, serials: dict[str, str]) -> None:
        self.path = path
        self._saved = dict(serials)
        self._current = dict(serials)

    @classmethod
    def beside(cls, outbox_path: Path) -> MeterSerials:
        """The file that goes with an outbox (one per outbox: agents may share a folder)."""
        return cls.load(outbox_path.with_name(outbox_path.name + ".serials.json"))

    @classmethod
    def load(cls, path: Path) -> MeterSerials:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            log.warning("event=meter_serials_unreadable path=%s error=%r", path, exc)
            data = {}
        serials = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(data, dict) else {}
        return cls(path, serials)

    def status_for(self, name: str, serial: str) -> int:
        """The status bits for meter ``name`` reporting ``serial`` now (remembered until saved)."""
        previous = self._current.get(name)
        self._current[name] = serial
        if previous is None or previous == serial:
            return 0
        log.warning("event=meter_exchanged meter=%s old_serial=%s new_serial=%s", name, previous,
                    serial)
        return StatusFlag.METER_EXCHANGED

    def save(self) -> None:
        """Persist what changed (after the outbox committed the cycle)."""
        if self._current == self._saved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.new")
        with open(tmp, "w") as handle:
            json.dump(self._current, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._saved = dict(self._current)
