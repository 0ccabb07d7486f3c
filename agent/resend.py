"""When to publish a reading again: a window of outstanding readings and a backoff per reading.

Pure (no I/O, no clock of its own): the publisher asks it which sent-but-unacked readings are due
again and how many never-sent ones may go out, and tells it when an ack made progress.

Why not "everything unacked again after ``ack_timeout``": while the backend is away, the broker
keeps what it PUBACKed in the backend's persistent session, so each resend is pure load — 20,983
publishes for 4,636 readings in a 60 s backend outage with 50 gateways (issue 18). The rules:

- **Window.** Readings go out only within ``window`` sequence numbers of the oldest one not yet
  acked (a range, as in TCP, not a count: a count filled by the newest readings of a backlog
  left the oldest unsent and ``upto`` stuck below them). The oldest leave first.
- **Backoff per reading.** A reading sent ``n`` times is due again ``ack_timeout · 2^(n-1)``
  seconds (at most ``maximum``) after its last send, plus up to half that again of jitter, fixed
  per (seq, attempt) so a fleet that lost the same backend does not resend in step.
- **Silence shrinks the window.** When a reading falls due and no ack has made progress since it
  was sent, the backend is away (or missed something): only the oldest ``probe`` readings are
  resent and nothing new goes out. The first ack that commits or quarantines anything opens the
  window again, and the publisher drains at once.
- **Reconnect.** A new broker connection opens the window (immediate drain), and a reading sent
  before it is due again at most ``ack_timeout`` after it: a broker that restarted without its
  store lost what it had PUBACKed.
- **A clock that went back** (a reading "sent" in the future) makes that reading due now.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outstanding:
    """A reading published at least once and not yet acked."""

    seq: int
    last_sent: int
    send_count: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What to publish now: these seqs again, and never-sent readings within ``new`` sequence
    numbers of the oldest unacked one (0: none); look again at ``wake`` (None: only an ack or a
    new reading changes anything)."""

    resend: tuple[int, ...]
    new: int
    wake: float | None


def _jitter(seq: int, attempt: int) -> float:
    """A fraction in [0, 0.5), fixed per (seq, attempt): spread, yet reproducible in tests."""
    mixed = (seq * 2_654_435_761 + attempt * 40_503) & 0xFFFF_FFFF
    mixed ^= mixed >> 15
    mixed = (mixed * 2_246_822_519) & 0xFFFF_FFFF
    return (mixed % 10_000) / 20_000


class ResendPolicy:
    """The window and backoff of one publisher (see the module docstring)."""

    def __init__(self, ack_timeout: float, *, window: int = 1000, probe: int = 1,
                 maximum: float = 900.0, factor: float = 2.0) -> None:
        if window < 1 or probe < 1:
            raise ValueError(f"window ({window}) and probe ({probe}) must be at least 1")
        self.ack_timeout = float(ack_timeout)
        self.window = window
        self.probe = min(probe, window)
        self.maximum = max(float(maximum), self.ack_timeout)
        self.factor = factor
        self.open = window  # the current window: ``window``, or ``probe`` after silence
        self.progress_at: float | None = None  # the last ack that committed anything
        self.connected_at: float | None = None

    def delay(self, seq: int, send_count: int) -> float:
        """Seconds after its last send that a reading sent ``send_count`` times is due again."""
        base = min(self.maximum, self.ack_timeout * self.factor ** max(0, send_count - 1))
        return base * (1.0 + _jitter(seq, send_count))

    def progress(self, now: float) -> None:
        """An ack committed or quarantined something: the backend is there, open the window."""
        self.progress_at = now
        self.open = self.window

    def reconnected(self, now: float) -> None:
        """A new broker connection: drain at once, and resend what the broker may have lost."""
        self.connected_at = now
        self.open = self.window

    def _due(self, reading: Outstanding, now: float) -> float:
        if reading.last_sent > now:  # the clock went back: its timer means nothing now
            return now
        due = reading.last_sent + self.delay(reading.seq, reading.send_count)
        if self.connected_at is not None and reading.last_sent < self.connected_at:
            due = min(due, self.connected_at + self.ack_timeout)
        return due

    def plan(self, outstanding: list[Outstanding], total: int, now: float) -> Plan:
        """``outstanding``: the oldest sent-but-unacked readings (at least ``window`` of them if
        there are that many), oldest first; ``total``: how many there are in all."""
        due_at = [(self._due(r, now), r) for r in outstanding[: self.window]]
        silent = any(
            due <= now and (self.progress_at is None or self.progress_at < r.last_sent)
            for due, r in due_at
        )
        if silent:
            self.open = self.probe
        resend = tuple(r.seq for due, r in due_at[: self.open] if due <= now)
        new = 0 if self.open < self.window else self.window
        later = [due for due, _ in due_at[: self.open] if due > now]
        return Plan(resend, new, min(later) if later else None)
