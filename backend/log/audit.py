"""Re-verify everything the backend stored, trusting nothing but leaf data and the log key.

Readings: parsed again, matched against their table row, signature checked with the key valid
for their sequence (from the device leaves' own data, in log order). Leaves: hashes recomputed
over the unpacked data (backend/store/leafdata.py; a blob that does not unpack is named).
Tree: rebuilt from the leaves in index order, streaming (O(log n) memory for the tree, one root
kept per checkpoint); every stored node (levels 4, 8, 12, ...) compared, and every node the
layout says is stored must be there (levels 8, 16, ... only, while an older log still waits for
the sealer's layout upgrade, backend/log/backfill.py). An erased
reading's leaf (docs/privacy.md, *Erasure*) has no data left to hash or verify: its stored leaf hash
is used as it is and counted in ``erased``; a changed hash would still fail the signed roots.
Checkpoints: signature and root at their size. Batches: the signed chain walked, each root
compared with the rebuilt tree. Assignments (SQLite, issue 17): every opening opens its leaf, every
binding and occupancy is as logged, no meter or point is logged in two places at once. Every
mismatch is named; nothing stops at the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meterchain.backend.access.assignments import AssignmentTables
from meterchain.backend.log.strata import STRIDE, is_stored
from meterchain.backend.log.tree import CompactRange
from meterchain.backend.store import AuditStore, SqliteStore
from meterchain.backend.store.leafdata import LeafDataError, unpack_leaf_data
from meterchain.contract.batch import GENESIS_PREV, BatchHeader, SignedBatchHeader
from meterchain.contract.checkpoint import open_checkpoint
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf, parse_leaf
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.message import SignedReading, parse_message
from meterchain.contract.note import NoteVerifier
from meterchain.contract.policy import SIGNED_BY_DEVICE, Evidence, Statement, VerificationError

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True, slots=True)
class Finding:
    """One stored item that no longer matches: its kind, its name, and what is wrong."""

    kind: str  # reading | leaf | device-key | assignment | node | tree | checkpoint | header
    name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.problem}"


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    readings: int = 0
    leaves: int = 0
    nodes: int = 0
    checkpoints: int = 0
    batches: int = 0
    erased: int = 0  # leaves whose data was erased: their stored hashes were used as they are
    signatures_checked: bool = True

    @property
    def ok(self) -> bool:
        return not self.findings


def _noop(phase: str, done: int, total: int) -> None:
    return None


async def audit(store: AuditStore, verifier: NoteVerifier | None,
                progress: Progress = _noop, *, log_only: bool = False) -> AuditReport:
    """Check everything; ``log_only`` (``meterchain audit --rebuild``) rebuilds and checks just
    the log from its leaves (nodes, checkpoints, batch chain), skipping the per-reading
    signature checks that dominate at millions of readings."""
    report = AuditReport(signatures_checked=verifier is not None)
    if not log_only:
        device_leaves = await _device_leaves(store, report)
        await _readings(store, device_leaves, report, progress)
        if isinstance(store, SqliteStore):  # the parties' tables are SQLite's (docs/backend.md)
            report.findings += [Finding("assignment", name, problem)
                                for name, problem in await AssignmentTables(store).audit()]
    roots = await _tree(store, report, progress)
    await _checkpoints(store, verifier, roots, report)
    await _batches(store, verifier, roots, report)
    return report


async def _device_leaves(store: AuditStore, report: AuditReport) -> dict[str, list[DeviceLeaf]]:
    """Device leaves parsed from the leaf data (the truth), checked against the key table."""
    leaves: dict[str, list[DeviceLeaf]] = {}
    async for leaf_id, data, device, event, key, kid, valid_from in store.keyed_device_leaves():
        try:
            leaf = parse_leaf(unpack_leaf_data(data, leaf_id))
            if not isinstance(leaf, DeviceLeaf):
                raise MeterchainError("a 'device' leaf does not hold a device leaf")
        except MeterchainError as exc:
            report.findings.append(Finding("leaf", f"#{leaf_id}", f"device leaf unreadable: {exc}"))
            continue
        leaves.setdefault(leaf.device, []).append(leaf)
        if (device, event, key, kid, valid_from) != (
            leaf.device, leaf.event.value, leaf.public_key_der, leaf.key_id, leaf.valid_from
        ):
            report.findings.append(Finding(
                "device-key", f"{leaf.device} leaf #{leaf_id}",
                "the key registry row differs from the device leaf in the log"))
    return leaves


async def _readings(store: AuditStore, device_leaves: dict[str, list[DeviceLeaf]],
                    report: AuditReport, progress: Progress) -> None:
    total = await store.count("readings")
    async for row in store.stored_readings():
        device, seq, meter, start, end, imp, exp, leaf_id, data, kind = row
        name = f"{device}#{seq}"
        report.readings += 1
        if report.readings % 1000 == 0:
            progress("readings", report.readings, total)
        if data is None or kind != "reading":
            report.findings.append(Finding("reading", name, f"its leaf #{leaf_id} is missing"))
            continue
        try:
            signed: SignedReading = parse_message(unpack_leaf_data(data, leaf_id))
        except MeterchainError as exc:
            report.findings.append(Finding("reading", name, f"stored message unreadable: {exc}"))
            continue
        r = signed.reading
        if (r.device, r.seq, r.meter, r.start, r.end, r.import_wh, r.export_wh) != (
            device, seq, meter, start, end, imp, exp
        ):
            report.findings.append(Finding("reading", name,
                                           "table row differs from the signed message"))
        try:  # key-validity, key-id, low-s, signature: the contract's policy
            SIGNED_BY_DEVICE.verify(
                Evidence(Statement.of_reading(signed), device_leaves.get(r.device, []))
            )
        except VerificationError as exc:
            report.findings.append(Finding(
                "reading", name, "no device key is valid for it" if exc.check == "key-validity"
                else f"{exc.check} check failed: {exc}"))
    progress("readings", report.readings, total)


async def _tree(store: AuditStore, report: AuditReport, progress: Progress) -> dict[int, bytes]:
    """Rebuild the tree from leaf data; compare every stored node; return roots at seal sizes."""
    sizes = await store.seal_sizes()
    total = await store.count("leaves")
    tree = CompactRange()
    roots: dict[int, bytes] = {}
    expected: dict[tuple[int, int], bytes] = {}
    layout = await store.strata_layout()  # levels a pending upgrade has not stored may be absent
    present = 0

    async def compare() -> None:
        nonlocal present
        stored = await store.nodes(list(expected))
        for (level, index), value in expected.items():
            if (level, index) in stored:
                present += 1
                report.nodes += 1
                if stored[(level, index)] != value:
                    report.findings.append(Finding("node", f"({level}, {index})",
                                                   "hash differs from the rebuilt tree"))
            elif is_stored(level, layout):
                report.nodes += 1
                report.findings.append(Finding("node", f"({level}, {index})", "missing"))
        expected.clear()

    async for leaf_id, data, stored_hash, index, erased in store.stored_leaves():
        report.leaves += 1
        if erased:
            report.erased += 1
            computed = stored_hash
            if data:
                report.findings.append(Finding("leaf", f"#{leaf_id}",
                                               "erased, but its data is still stored"))
        else:
            try:
                computed = leaf_hash(unpack_leaf_data(data, leaf_id))
            except LeafDataError as exc:
                report.findings.append(Finding("leaf", f"#{leaf_id}", f"data unreadable: {exc}"))
                computed = stored_hash  # named above; rebuild on, to check the rest
        if computed != stored_hash:
            report.findings.append(Finding("leaf", f"#{leaf_id}", "stored leaf hash differs from its data"))
        if index is None:
            continue  # not sealed yet
        if index != tree.size:
            report.findings.append(Finding("leaf", f"#{leaf_id}",
                                           f"leaf index {index}, expected {tree.size}"))
            break
        for level, node_index, value in tree.extend([computed], STRIDE):
            expected[(level, node_index)] = value
        if tree.size in sizes:
            roots[tree.size] = tree.root()
        if len(expected) >= 4000:
            await compare()
            progress("tree", report.leaves, total)
    await compare()
    progress("tree", report.leaves, total)
    stored_count = await store.count("log_nodes")
    if stored_count != present:
        report.findings.append(Finding(
            "tree", f"size {tree.size}",
            f"{stored_count} nodes stored, {present} of them in the rebuilt tree (extra nodes)"))
    return roots


async def _checkpoints(store: AuditStore, verifier: NoteVerifier | None,
                       roots: dict[int, bytes], report: AuditReport) -> None:
    async for row in store.all_checkpoints():
        size, root, note = row.size, row.root, row.note
        report.checkpoints += 1
        name = f"size {size}"
        if roots.get(size) != root:
            report.findings.append(Finding("checkpoint", name, "root differs from the rebuilt tree"))
        if verifier is None:
            continue
        try:
            opened = open_checkpoint(note, verifier)
        except MeterchainError as exc:
            report.findings.append(Finding("checkpoint", name, f"signed note does not verify: {exc}"))
            continue
        if (opened.size, opened.root) != (size, roots.get(size)):
            report.findings.append(Finding("checkpoint", name,
                                           "signed size/root differ from the rebuilt tree"))


async def _batches(store: AuditStore, verifier: NoteVerifier | None,
                   roots: dict[int, bytes], report: AuditReport) -> None:
    previous: BatchHeader | None = None
    async for row in store.all_batches():
        idx, first, size, root, sealed, blob = (row.idx, row.first, row.size, row.root,
                                                row.sealed, row.header)
        report.batches += 1
        name = f"batch {idx}"
        try:
            signed = SignedBatchHeader.from_cbor(blob)
            if verifier is not None:
                signed.verify(verifier)
        except MeterchainError as exc:
            report.findings.append(Finding("header", name, str(exc)))
            previous = None
            continue
        h = signed.header
        problems = []
        if (h.index, h.first, h.size, h.root, h.sealed) != (idx, first, size, root, sealed):
            problems.append("table columns differ from the signed header")
        if previous is not None:
            if h.index != previous.index + 1 or h.prev != previous.hash():
                problems.append(f"does not chain to batch {previous.index}")
            if h.first != previous.size:
                problems.append(f"first leaf {h.first}, expected {previous.size}")
        elif idx == 0 and (h.prev != GENESIS_PREV or h.first != 0):
            problems.append("the first batch must start the chain (genesis prev, first leaf 0)")
        if roots.get(h.size) != h.root:
            problems.append("root differs from the rebuilt tree")
        for problem in problems:
            report.findings.append(Finding("header", name, problem))
        previous = h
