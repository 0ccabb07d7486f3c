"""Checking in worker processes: the per-message checks of backend/ingest/checks.py, run where
they do not fight the event loop for the GIL (issue 20).

Only ECDSA verification releases the GIL; CBOR parsing, the model checks and leaf packing hold
it, so verify threads and the thread that reads MQTT took turns on one core. Here each batch is
cut into one chunk per process, checked by :func:`meterchain.backend.ingest.checks.check_batch`
(the same function, every check), and the results come back in order. The wire between the
processes is plain tuples: pickling the frozen slotted dataclasses cost ≈ 55 µs a message (one
Python ``__getstate__`` call per object), the tuples ≈ 10 µs, and the message bytes are not sent
back (the parent has them).

A process that dies (killed, out of memory, a crash in a C library) breaks the pool: it is
started again and the batch checked again, since nothing of it was committed or acked. If the
batch breaks it twice, each message is checked alone, and one that kills its process every time
is refused as ``internal`` (unauthenticated junk, never in an ack): bad input costs a message,
never the service.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from meterchain.backend.ingest.checks import REASONS, Checked, check_batch, topic_blame
from meterchain.backend.store import RejectionRecord, VerifiedReading
from meterchain.backend.store.records import VerifiedGap
from meterchain.contract.ack import device_from_topic
from meterchain.contract.leaves import DeviceLeaf
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

Messages = Sequence[tuple[str, bytes]]
Leaves = Mapping[str, Sequence[DeviceLeaf]]
#: A checked message on the wire: ("r", reading fields but the message), ("x", rejection
#: fields) or ("g", gap fields).
Wire = tuple[object, ...]
CheckFunction = Callable[[Messages, Leaves, int], list[Checked]]

RESTARTS = Counter("meterchain_ingest_check_process_restarts",
                   "Times the pool of check processes was started again after a process died")
RUNNING = Gauge("meterchain_ingest_check_processes",
                "Check processes started and answering (0 while they start or restart)")
#: How often a batch is checked again after its pool broke, before each message is checked alone.
RETRIES = 2


def to_wire(checked: Checked) -> Wire:
    """One result as a tuple of builtins (fast to pickle); the reading's message stays behind."""
    if (r := checked.reading) is not None:
        return ("r", r.device, r.seq, r.meter, r.start, r.end, r.import_wh, r.export_wh,
                r.stored, r.reading_digest, r.leaf_hash, r.received_at)
    if (g := checked.gap) is not None:
        return ("g", g.device, g.first, g.last, g.message, g.leaf_hash, g.received_at)
    x = checked.rejection
    assert x is not None  # a Checked holds exactly one of the three
    return ("x", x.device, x.seq, x.reason, x.detail, x.permanent, x.time)


def from_wire(wire: Wire, payload: bytes) -> Checked:
    """The inverse of :func:`to_wire`; ``payload`` is the message as received."""
    kind, *fields = wire
    if kind == "r":
        return Checked(reading=VerifiedReading(*fields[:7], payload, *fields[7:]))  # type: ignore[arg-type, call-arg]
    if kind == "g":
        return Checked(gap=VerifiedGap(*fields))  # type: ignore[arg-type]
    return Checked(rejection=RejectionRecord(*fields))  # type: ignore[arg-type]


def check_chunk(messages: Messages, leaves: Leaves, now: int,
                check: CheckFunction = check_batch) -> tuple[list[Wire], int]:
    """Run in a check process: the results on the wire, and the CPU-ns the checks took there."""
    started = time.thread_time_ns()
    results = [to_wire(c) for c in check(messages, leaves, now)]
    return results, time.thread_time_ns() - started


def _warm() -> int:
    """Nothing but proof that a process is up with the checks imported."""
    return len(REASONS)


def leaves_for(messages: Messages, leaves: Leaves) -> dict[str, Sequence[DeviceLeaf]]:
    """The keys of the devices the chunk's topics name: every check looks up only the topic's
    device (the reading's device must equal it), so a chunk needs no others. Keeps what is
    pickled per chunk bounded by the chunk, not by the registry."""
    wanted: dict[str, Sequence[DeviceLeaf]] = {}
    for topic, _ in messages:
        device = device_from_topic(topic)
        if device is not None and device not in wanted and (found := leaves.get(device)):
            wanted[device] = found
    return wanted


class CheckPool:
    """``processes`` worker processes that check chunks of a batch; results in message order.

    ``check`` is the per-chunk function (a module-level function, since it is sent to the
    processes by name); the default is ingest's. ``cpu_ns`` sums the CPU the checks took in the
    processes (the benchmark's per-stage table, ``meterchain_ingest_stage_cpu_seconds``)."""

    def __init__(self, processes: int, *, check: CheckFunction = check_batch) -> None:
        if processes < 1:
            raise ValueError(f"a check pool needs at least one process, not {processes}")
        self.processes = processes
        self.check_function = check
        self.cpu_ns = 0
        self.restarts = 0
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._starting: concurrent.futures.Future[None] | None = None

    def _ensure(self) -> None:
        """Start the processes and wait until each answers. Runs in a daemon thread: starting
        blocks (the first time until the forkserver has imported the checks, seconds on a busy
        machine), which must neither stall the event loop nor hold up the process's exit."""
        # forkserver: each process is forked from a small server process that imported the
        # checks once (a restart after a crash takes milliseconds, not an interpreter start),
        # never from this process with its event loop and SQLite threads.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        executor = ProcessPoolExecutor(self.processes, mp_context=context)
        try:
            for started in [executor.submit(_warm) for _ in range(self.processes)]:
                started.result()
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        with self._lock:
            if self._closed:  # closed while it started
                executor.shutdown(wait=False, cancel_futures=True)
            else:
                self._executor = executor
                RUNNING.set(self.processes)

    def _start(self) -> concurrent.futures.Future[None]:
        """The start under way, or a new one."""
        with self._lock:
            if self._starting is None or self._starting.done():
                future: concurrent.futures.Future[None] = concurrent.futures.Future()

                def run() -> None:
                    try:
                        self._ensure()
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(None)

                threading.Thread(target=run, name="mc-check-pool-start", daemon=True).start()
                self._starting = future
            return self._starting

    async def _pool(self) -> ProcessPoolExecutor:
        while (executor := self._executor) is None:
            if self._closed:  # a bug, not a dead process: no message may be refused for it
                raise RuntimeError("the check pool is closed")
            await asyncio.wrap_future(self._start())
        return executor

    async def start(self) -> None:
        """Start every process now, so the first batch does not wait for them."""
        await self._pool()

    def _restart(self, error: BaseException, broken: ProcessPoolExecutor) -> None:
        """``broken`` died under a batch: shut it down so the next batch starts new processes.
        Only if it is still the pool: two batches at once (a commit's re-check on new keys beside
        the check stage) both see one death, and the later one must not shut down the processes
        the earlier one's retry started (its queued chunks would be cancelled)."""
        with self._lock:
            if self._executor is not broken:
                return
            self._executor = None
            RUNNING.set(0)
        self.restarts += 1
        RESTARTS.inc()
        log.error("event=check_process_died error=%r restarts=%d: the batch is checked again "
                  "(nothing of it was committed or acked)", str(error), self.restarts)
        broken.shutdown(wait=False, cancel_futures=True)

    async def _run(self, chunks: Sequence[Messages], leaves: Leaves, now: int
                   ) -> list[Checked]:
        loop = asyncio.get_running_loop()
        pool = await self._pool()
        try:
            futures = [loop.run_in_executor(pool, check_chunk, chunk, leaves_for(chunk, leaves),
                                            now, self.check_function) for chunk in chunks]
            parts = await asyncio.gather(*futures)
        except BrokenProcessPool as exc:
            self._restart(exc, pool)
            raise
        results: list[Checked] = []
        for chunk, (wires, cpu_ns) in zip(chunks, parts, strict=True):
            self.cpu_ns += cpu_ns
            results += [from_wire(w, payload) for w, (_, payload) in zip(wires, chunk, strict=True)]
        return results

    async def check(self, messages: Messages, leaves: Leaves, now: int) -> list[Checked]:
        """Check ``messages`` (every check of checks.py), results in their order."""
        if not messages:
            return []
        step = -(-len(messages) // self.processes)
        chunks = [messages[i : i + step] for i in range(0, len(messages), step)]
        for _ in range(RETRIES):
            with contextlib.suppress(BrokenProcessPool):  # restarted by _run
                return await self._run(chunks, leaves, now)
        return await self._one_by_one(messages, leaves, now)

    async def _one_by_one(self, messages: Messages, leaves: Leaves, now: int) -> list[Checked]:
        """The batch broke the pool every time: find the message(s) that do, refuse them."""
        results: list[Checked] = []
        for topic, payload in messages:
            try:
                results += await self._run([[(topic, payload)]], leaves, now)
            except BrokenProcessPool:  # restarted by _run
                log.error("event=check_process_killed_by_message topic=%r bytes=%d: refused as "
                          "internal", topic[:120], len(payload))
                results.append(Checked(rejection=RejectionRecord(
                    topic_blame(topic, leaves), None, "internal",
                    "the check process died on this message", REASONS["internal"], now)))
        return results

    def pids(self) -> list[int]:
        """The check processes' ids (none before :meth:`start` or the first batch)."""
        executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return sorted(processes)

    def close(self) -> None:
        """Stop the processes (a batch being checked is dropped: it was never acked)."""
        with self._lock:  # a start under way shuts down what it started when it sees _closed
            self._closed = True
            executor, self._executor = self._executor, None
            RUNNING.set(0)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
