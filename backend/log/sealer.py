"""The sealing task: shortly after commits arrive, every T seconds or at M pending leaves, extend the tree.

One seal is ONE transaction: leaf indices (in arrival order), the new stored nodes, the signed
checkpoint and the signed batch header are written together or not at all, so a crash at any
point leaves the previous seal intact. Hashing and signing happen before the transaction opens,
and the transaction only writes, so the write lock is held for milliseconds and ingest (another
connection) keeps committing. On start the compact range is restored from the stored peaks and
checked against the newest checkpoint before another checkpoint is signed, and a log written
before the current layout gets its missing stored levels first (backend/log/backfill.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from meterchain.backend.log.backfill import backfill_strata
from meterchain.backend.log.strata import STRIDE
from meterchain.backend.log.tree import CompactRange
from meterchain.backend.store import LogStore, Seal, StoreError
from meterchain.contract.batch import BatchHeader, SignedBatchHeader, next_header
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.note import NoteSigner
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

SEALED_LEAVES = Counter("meterchain_sealed_leaves", "Leaves sealed into the log")
TREE_SIZE = Gauge("meterchain_tree_size", "Size of the newest signed checkpoint")


class Sealer:
    """Owns the tree's right edge in memory; the store owns everything else."""

    def __init__(
        self,
        store: LogStore,
        signer: NoteSigner,
        *,
        interval: float = 5.0,
        max_leaves: int = 10_000,
        coalesce: float | None = 0.05,
        clock: Callable[[], float] = time.time,
        on_sealed: Callable[[int, str], Awaitable[object]] | None = None,
    ) -> None:
        if max_leaves < 1 or interval <= 0 or (coalesce is not None and coalesce < 0):
            raise ValueError("a seal needs max_leaves >= 1, interval > 0 and coalesce >= 0")
        self.store = store
        self.signer = signer
        self.interval = interval
        self.max_leaves = max_leaves
        # Arrival-driven sealing (issue 20): a commit wakes the sealer, which waits this long for
        # more commits to join the seal; None: seal only on the timer or at M leaves.
        self.coalesce = coalesce
        self.clock = clock
        # After each committed seal, with its size and note: witness cosigning (cosigning.py).
        self.on_sealed = on_sealed
        self.tree = CompactRange()
        self.last_header: BatchHeader | None = None
        self._pending_hint = 0
        self._wake = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        """Restore the compact range, check it against the newest checkpoint, and bring an
        older log to the current layout (it reads right meanwhile; seals wait for it)."""
        state = await self.store.tree_state()
        tree = CompactRange.from_nodes(state.size, list(state.peaks))
        if state.checkpoint_size is not None and tree.root() != state.checkpoint_root:
            raise StoreError(
                "the stored tree does not match the newest checkpoint; run `meterchain audit` "
                "before sealing again",
                size=state.size,
            )
        header = SignedBatchHeader.from_cbor(state.last_header).header if state.last_header else None
        if (header.size if header else 0) != state.size:
            raise StoreError(
                "the newest batch header does not end at the sealed tree size",
                size=state.size,
                header_size=header.size if header else 0,
            )
        await backfill_strata(self.store, state.size)
        self.tree, self.last_header, self._started = tree, header, True
        TREE_SIZE.set(tree.size)

    def notify(self, committed: int) -> None:
        """Ingest committed ``committed`` new leaves: seal soon (after the coalescing window), at
        once when M are waiting."""
        self._pending_hint += committed
        if self._pending_hint >= self.max_leaves or (committed > 0 and self.coalesce is not None):
            self._wake.set()

    async def seal_once(self, between: Callable[[str], None] | None = None) -> int:
        """Seal up to M pending leaves; return how many (0 if none were pending)."""
        if not self._started:
            await self.start()
        pending = await self.store.pending_leaves(self.max_leaves)
        if not pending:
            return 0
        tree = CompactRange.from_nodes(self.tree.size, list(self.tree.peaks))
        # Only every STRIDE-th level is stored (4, 8, ...); leaf hashes already are, in `leaves`.
        nodes = tree.extend([leaf_hash for _, leaf_hash in pending], STRIDE)
        root = tree.root()
        sealed = max(int(self.clock()), self.last_header.sealed if self.last_header else 0)
        note = Checkpoint(self.signer.name, tree.size, root).sign(self.signer)
        header = next_header(self.last_header, tree.size, root, sealed)
        signed = SignedBatchHeader.sign(header, self.signer)
        await self.store.seal(
            Seal(
                old_size=self.tree.size,
                leaf_ids=tuple(leaf_id for leaf_id, _ in pending),
                nodes=tuple(nodes),
                size=tree.size,
                root=root,
                note=note,
                batch_index=header.index,
                header=signed.to_cbor(),
                sealed=sealed,
            ),
            between,
        )
        # Only now, after the commit, does the in-memory edge move.
        self.tree, self.last_header = tree, header
        self._pending_hint = max(0, self._pending_hint - len(pending))
        SEALED_LEAVES.inc(len(pending))
        TREE_SIZE.set(tree.size)
        log.info("sealed batch %d: leaves [%d, %d)", header.index, header.first, header.size)
        if self.on_sealed is not None:
            try:
                await self.on_sealed(tree.size, note)
            except Exception:  # the seal stands; only its cosignatures are missing
                log.exception("sealer: collecting cosignatures for size %d failed", tree.size)
        return len(pending)

    async def seal_all(self) -> int:
        """Seal until nothing is pending (tests and shutdown)."""
        total = 0
        while count := await self.seal_once():
            total += count
        return total

    async def run(self) -> None:
        """Seal ``coalesce`` seconds after a commit arrives, at once when M leaves are pending, and
        at least every ``interval`` seconds (commits this process is not told of: other workers)."""
        await self.start()
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # comes in the turn a commit wakes the sealer, which then sealed on after its stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            if self._wake.is_set() and self.coalesce and self._pending_hint < self.max_leaves:
                await asyncio.sleep(self.coalesce)  # commits within the window join this seal
            self._wake.clear()
            try:
                # A backlog is sealed in consecutive batches of at most M.
                while await self.seal_once() == self.max_leaves:
                    await asyncio.sleep(0)
            except StoreError as exc:
                log.error("sealer: %s", exc.diagnostics())
                raise
            except Exception:
                log.exception("sealer: seal failed, nothing was written; retrying")
