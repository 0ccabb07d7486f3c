"""Which acks the agent believes (issue 14): signed by the backend's control key, for this device,
and never above the highest sequence this gateway has signed.

An ack makes the agent delete readings, so a forged one could make it forget readings the
backend never stored. :class:`AckGuard` opens every ack before the outbox sees it:

- with a control key (provisioning writes ``control_key``), the ack must be a control message
  (contract/control.py) signed by a trusted control key; the keys it names become the trusted
  ones (a rotation reaches the gateway through an ack the old key signed), kept beside the device
  key in ``<key>.control-keys``;
- without one (demo, legacy configs), an ack is taken **unverified** and every one raises an
  alarm: a log line, ``meterchain_agent_acks_unverified``, the status message and `agent check`;
- always refused: an ack for another device, or one whose ``upto`` or rejections lie above the
  highest sequence this gateway signed (``ahead``: the backend cannot have committed what was
  never signed). A refusal is an alarm too (``meterchain_agent_acks_refused{reason}``), and the
  agent never moves its own sequence on an ack's word (docs/agent.md, "Sequence reservation").

Alarms are kept in ``<outbox>.alarms.json`` (the newest per kind) for the status message and
`agent check`, which run without the agent's memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterchain.contract.ack import Ack, Rejection
from meterchain.contract.control import (
    ACK_V2_TYPE,
    ControlError,
    SignedAck,
    open_control,
    read_unverified,
)
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteVerifier

log = logging.getLogger(__name__)


class AckRefused(MeterchainError):
    """An ack the agent will not apply; ``reason`` is a stable code for metrics and alarms."""

    check = "ack"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OpenedAck:
    """An ack to apply, whether it was verified, and the gaps the backend has logged."""

    ack: Ack
    verified: bool
    gaps: tuple[tuple[int, int], ...] = ()


def keys_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".control-keys")


def alarms_path(outbox_path: Path) -> Path:
    return outbox_path.with_name(outbox_path.name + ".alarms.json")


def read_alarms(outbox_path: Path) -> dict[str, dict[str, Any]]:  # JSON
    """The newest alarm of each kind (``ack-refused:<reason>``, ``ack-unverified``, ``gap``)."""
    try:
        data = json.loads(alarms_path(outbox_path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_alarm(outbox_path: Path, kind: str, detail: str, now: float | None = None) -> None:
    """Keep the newest alarm of ``kind`` (count, first and last time); atomic, small."""
    alarms = read_alarms(outbox_path)
    when = int(time.time() if now is None else now)
    entry = alarms.get(kind) or {"count": 0, "first": when}
    entry.update(count=int(entry.get("count", 0)) + 1, last=when, detail=detail[:300])
    alarms[kind] = entry
    path = alarms_path(outbox_path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(alarms, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:  # an alarm that cannot be kept is still logged and counted
        log.warning("event=alarm_not_kept path=%s error=%s", path, exc)


class AckGuard:
    """Opens acks for one device (see the module docstring)."""

    def __init__(self, device: str, control_key: str | None, key_path: Path) -> None:
        self.device = device
        self.keys_file = keys_path(key_path)
        self.trusted: list[NoteVerifier] = []
        if control_key is not None:
            self.trusted = self._learned() or [NoteVerifier.parse(control_key)]

    @property
    def verifying(self) -> bool:
        return bool(self.trusted)

    def _learned(self) -> list[NoteVerifier]:
        try:
            lines = self.keys_file.read_text().split()
            return [NoteVerifier.parse(line) for line in lines]
        except (OSError, MeterchainError):
            return []

    def open(self, payload: bytes, highest_signed: int) -> OpenedAck:
        """The ack in ``payload`` if it may be applied; raises :class:`AckRefused` otherwise."""
        verified = self.verifying
        if verified:
            try:
                body, _ = open_control(payload, ACK_V2_TYPE, self.trusted)
                signed = SignedAck.from_body(body)
            except (ControlError, MeterchainError) as exc:
                text = str(exc)
                reason = "signature" if "signed by" in text or "verify" in text else "encoding"
                raise AckRefused(reason, f"ack not from the backend: {exc}") from None
            self._adopt(signed.keys)
        else:
            signed = self._unverified(payload)
        if signed.device != self.device:
            raise AckRefused("foreign-device", f"ack for device {signed.device!r} on the topic "
                             f"of {self.device!r}")
        highest_listed = max([signed.upto, *(s for s, _, _ in signed.rejected)])
        if highest_listed > highest_signed:
            raise AckRefused("ahead", f"ack covers sequence {highest_listed}, but this gateway "
                             f"has signed only up to {highest_signed}")
        ack = Ack(signed.device, signed.upto,
                  tuple(Rejection(s, r, d) for s, r, d in signed.rejected), signed.time)
        return OpenedAck(ack, verified, signed.gaps)

    def _unverified(self, payload: bytes) -> SignedAck:
        try:
            return SignedAck.from_body(read_unverified(payload, ACK_V2_TYPE))
        except MeterchainError:
            pass
        try:  # a v1 ack (an older backend): unsigned by construction
            old = Ack.from_cbor(payload)
        except MeterchainError as exc:
            raise AckRefused("encoding", f"not an ack: {exc.diagnostics()}") from None
        return SignedAck(old.device, old.upto,
                         tuple((r.seq, r.reason, r.detail[:120]) for r in old.rejected[-32:]),
                         (), old.time)

    def _adopt(self, keys: tuple[str, ...]) -> None:
        """Trust exactly the keys a verified ack names (a rotation), kept beside the key."""
        if not keys or sorted(keys) == sorted(str(v) for v in self.trusted):
            return
        self.trusted = [NoteVerifier.parse(k) for k in keys]
        tmp = self.keys_file.with_name(self.keys_file.name + ".tmp")
        try:
            tmp.write_text("\n".join(keys) + "\n")
            os.replace(tmp, self.keys_file)
        except OSError as exc:
            log.warning("event=control_keys_not_kept path=%s error=%s", self.keys_file, exc)
        log.warning("event=control_key_adopted device=%s keys=%s", self.device, ",".join(keys))


def recent_alarms(outbox_path: Path, now: float | None = None,
                  within: float = 86_400) -> tuple[str, ...]:
    """The alarm kinds raised in the last ``within`` seconds, for the status message."""
    when = time.time() if now is None else now
    return tuple(sorted(kind for kind, alarm in read_alarms(outbox_path).items()
                        if when - float(alarm.get("last", 0)) <= within))
