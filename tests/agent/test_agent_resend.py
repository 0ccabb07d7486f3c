"""The resend policy (agent/resend.py): window, backoff per reading, silence, reconnect."""

from __future__ import annotations

import pytest
from meterchain.agent.resend import Outstanding, ResendPolicy


def out(*rows: tuple[int, int, int]) -> list[Outstanding]:
    return [Outstanding(*row) for row in rows]


def test_the_backoff_doubles_per_send_with_jitter_never_below_the_ack_timeout() -> None:
    policy = ResendPolicy(5, maximum=60)
    delays = [policy.delay(7, n) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        base = min(60, 5 * 2 ** (n - 1))
        assert base <= delay < base * 1.5
    assert delays[-1] < 90  # capped
    assert len({round(policy.delay(seq, 1), 6) for seq in range(100)}) > 50  # spread per seq


def test_new_readings_fill_the_window_and_no_more() -> None:
    policy = ResendPolicy(5, window=10)
    plan = policy.plan(out(*[(s, 100, 1) for s in range(1, 5)]), 4, now=101)
    assert plan.resend == () and plan.new == 10  # within 10 seqs of the oldest unacked
    assert plan.wake is not None and 105 <= plan.wake < 107.5


def test_silence_shrinks_the_window_to_a_probe_and_progress_opens_it() -> None:
    policy = ResendPolicy(5, window=10)
    sent = out(*[(s, 100, 1) for s in range(1, 11)])
    plan = policy.plan(sent, 10, now=200)  # all due, no ack since they were sent
    assert plan.resend == (1,) and plan.new == 0
    policy.progress(201)
    plan = policy.plan(sent[1:], 9, now=202)  # sent before the progress: resent, window open
    assert plan.resend == tuple(range(2, 11)) and plan.new == 10


def test_a_reading_lost_by_the_broker_is_resent_one_ack_timeout_after_a_reconnect() -> None:
    policy = ResendPolicy(5, window=10, maximum=900)
    policy.progress(0)
    sent = out((1, 10, 6))  # backed off: due ~170 s after its send
    assert policy.plan(sent, 1, now=20).resend == ()
    policy.reconnected(20)
    assert policy.plan(sent, 1, now=24).resend == ()
    assert policy.plan(sent, 1, now=25).resend == (1,)


def test_a_clock_that_went_back_makes_readings_due_now() -> None:
    policy = ResendPolicy(5, window=10)
    policy.progress(5_000)
    assert policy.plan(out((1, 9_000, 1)), 1, now=6_000).resend == (1,)


def test_amplification_of_a_long_backend_outage_stays_below_one_and_a_half() -> None:
    """A reading a second, the backend away for 600 s, every publish counted (the broker keeps
    the readings for the backend, which acks them all once back)."""
    policy = ResendPolicy(5, window=1000)
    policy.progress(0)
    outbox: dict[int, tuple[int, int]] = {}  # seq -> (last_sent, count)
    publishes = 0
    for now in range(0, 600):
        outbox[now + 1] = (-1, 0)
        sent = sorted((s, v) for s, v in outbox.items() if v[1] > 0)
        plan = policy.plan(out(*[(s, ls, c) for s, (ls, c) in sent]), len(sent), now)
        oldest = min(outbox)
        unsent = [s for s, v in sorted(outbox.items()) if v[1] == 0 and s < oldest + plan.new]
        for seq in (*plan.resend, *unsent):
            outbox[seq] = (now, outbox[seq][1] + 1)
            publishes += 1
    # back: everything queued at the broker is acked; the rest drains once
    publishes += sum(1 for _, c in outbox.values() if c == 0)
    assert publishes / 600 <= 1.5


def test_window_and_probe_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        ResendPolicy(5, window=0)
