"""How long to wait before the next connection attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": each delay is half its cap fixed, half random.

    The cap is ``initial * factor**attempt``, at most ``maximum``. Attempt 0 (the first retry
    after a connection was lost) waits 0.25-0.5 s with the defaults, so a client is back within
    a second or two of a restarted broker; never zero, so a broker that stays down is not
    hammered; random, so a thousand gateways that lost the same broker do not all come back in
    the same second. The reconnect loop starts again at attempt 0 after every connection.

    ``probe``: while a wait runs and the broker does not answer, the loop checks every
    ``probe/2..probe`` seconds (random) whether its port accepts a TCP connection, and connects at
    once when it does: a long outage does not cost up to ``maximum`` after the broker is back
    (issue 20). 0 turns it off.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    probe: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1 or self.probe < 0:
            raise ValueError(f"backoff needs 0 < initial <= maximum, factor >= 1 and probe >= 0, "
                             f"got {self}")

    def cap(self, attempt: int) -> float:
        """The longest wait before retry number ``attempt`` (0-based)."""
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A wait in ``[cap/2, cap]`` before retry number ``attempt``."""
        cap = self.cap(attempt)
        return cap / 2 + rng.uniform(0, cap / 2)
