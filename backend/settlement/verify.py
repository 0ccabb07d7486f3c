"""``meterchain settle --verify``: re-run one settled interval from the signed readings and compare
the digest with the settlement leaf in the log.

What is checked, in order: the settlement leaf names this community, interval, revision and
digest (and, with the log key, is included under a signed checkpoint); every reading the
settlement names by leaf hash is stored, correctly signed by the key valid for its sequence (with
the log key: its whole proof bundle verifies, inclusion included); each member's energy is derived
again from its readings (the same rule the runner uses, ``settlement.member_interval``); the
interval is settled again with the prices, fees and listings it was settled with; the digest must
equal the logged one. Prices are inside the digest, so they cannot differ unnoticed.

With the log key, each reading also counts for its member's metering point by the logged meter
bindings (issue 17): the bindings' openings are included under the newest checkpoint
(``assignment-inclusion``) and tie the reading's meter to that point at its end, or just before
it for a meter's closing reading at its binding's end (``point-assigned``), so a binding changed
in the table alone is found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meterchain.backend.access.assignments import AssignmentTables
from meterchain.backend.log.proofs import build_bundle, inclusion_proof
from meterchain.backend.settlement.netting import (
    IntervalInput,
    MemberInterval,
    Quality,
    settle_interval,
)
from meterchain.backend.settlement.runner import (
    QUALITY_OF_READING,
    PointReading,
    SettledInput,
    member_interval,
)
from meterchain.backend.settlement.tables import OPEN_END, SettlementTables
from meterchain.backend.store import ProofStore, SqliteStore
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf, SettlementLeaf, parse_leaf
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.message import SignedReading, parse_message
from meterchain.contract.note import NoteVerifier
from meterchain.contract.policy import (
    SIGNED_BY_DEVICE,
    AllOf,
    AssignmentsIncluded,
    CheckpointSigned,
    Evidence,
    LoggedLeaf,
    LoggedOpening,
    PointAssigned,
    PointClaim,
    Statement,
    VerificationError,
    logged_leaf_policy,
)


@dataclass
class VerifyReport:
    community: str
    interval_start: int
    revision: int | None = None
    logged_digest: bytes | None = None
    digest: bytes | None = None
    readings: int = 0
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.digest is not None and self.digest == self.logged_digest


async def _signed_reading(store: ProofStore, device: str, seq: int,
                          log_key: NoteVerifier | None) -> SignedReading:
    if log_key is not None:
        return verify_bundle(await build_bundle(store, device, seq), log_key).reading
    row = await store.reading(device, seq)
    assert row is not None
    signed = parse_message(row.message)
    leaves = []
    for leaf_row in await store.device_leaves(device):
        leaf = parse_leaf(leaf_row.data)
        if isinstance(leaf, DeviceLeaf):
            leaves.append(leaf)
    SIGNED_BY_DEVICE.verify(Evidence(Statement.of_reading(signed), leaves))
    return signed


async def _points_assigned(store: SqliteStore, readings: list[PointReading],
                           log_key: NoteVerifier) -> list[str]:
    """Problems proving each reading's metering point from the logged bindings (none: proven)."""
    checkpoint = await store.latest_checkpoint()
    if checkpoint is None:
        return ["point-assigned: nothing is sealed yet"]
    openings = await AssignmentTables(store).meter_openings({r.point for r in readings}, checkpoint.size)
    evidence = Evidence(checkpoint_note=checkpoint.note, logged_assignments=[
        LoggedOpening(o.opening, o.leaf_index, tuple(await inclusion_proof(store, o.leaf_index,
                                                                           checkpoint.size)))
        for o in openings if o.leaf_index is not None])
    try:
        AllOf(CheckpointSigned(log_key), AssignmentsIncluded()).verify(evidence)
    except VerificationError as exc:
        return [exc.diagnostics()]
    problems = []
    for r in readings:
        for instant in (r.end, r.end - 1):  # at its end, or the closing reading at the binding's end
            evidence.claim = PointClaim(r.point, r.device, r.meter, instant)
            try:
                _POINT_ASSIGNED.verify(evidence)
                break
            except VerificationError as exc:
                failure = exc
        else:
            problems.append(f"reading {r.device}#{r.seq}: {failure.diagnostics()}")
    return problems


_POINT_ASSIGNED = PointAssigned()


async def verify_settlement(store: SqliteStore, community: str, interval_start: int,
                            revision: int | None = None,
                            log_key: NoteVerifier | None = None) -> VerifyReport:
    """Re-derive and re-settle one interval revision (default: the one in force)."""
    tables = SettlementTables(store)
    report = VerifyReport(community, interval_start)
    row = await tables.settlement(community, interval_start, revision)
    if row is None:
        report.problems.append(f"no settlement of {community} for the interval starting "
                               f"{interval_start}" + ("" if revision is None else f" rev {revision}"))
        return report
    report.revision = row.revision

    data, hashed, index = await tables.leaf_data(row.leaf_id)
    leaf = parse_leaf(data)
    if not isinstance(leaf, SettlementLeaf):
        report.problems.append("the settlement's log entry is not a settlement leaf")
        return report
    fields = leaf.fields
    logged = fields.get("digest")
    report.logged_digest = logged if isinstance(logged, bytes) else None
    expected = {"community": community, "interval": [interval_start, row.interval_seconds],
                "revision": row.revision, "digest": row.digest, "supersedes": row.supersedes}
    for name, value in expected.items():
        if fields.get(name) != value:
            report.problems.append(f"settlement leaf field {name!r} is {fields.get(name)!r}, "
                                   f"expected {value!r}")
    report.passed.append("leaf")
    if log_key is not None:
        checkpoint = await store.latest_checkpoint()
        if index is None or checkpoint is None or index >= checkpoint.size:
            report.problems.append("the settlement leaf is not sealed yet; retry after the next seal")
            return report
        try:
            if leaf_hash(data) != hashed:
                raise MeterchainError("stored leaf hash is not the hash of the leaf")
            proof = await inclusion_proof(store, index, checkpoint.size)
            logged_leaf_policy(log_key).verify(Evidence(
                checkpoint_note=checkpoint.note, leaf=LoggedLeaf(data, index, tuple(proof))))
        except MeterchainError as exc:
            report.problems.append(f"settlement leaf inclusion: {exc}")
            return report
        report.passed.append("leaf-inclusion")

    settled = SettledInput.decode(row.input)
    found = await tables.readings_by_leaf_hash(list(settled.interval.leaf_hashes))
    if len(found) != len(settled.interval.leaf_hashes):
        report.problems.append(f"{len(settled.interval.leaf_hashes) - len(found)} of the "
                               "settlement's readings are not stored")
        return report
    bindings = await tables.bindings(community)
    members = set(settled.interval.member_ids)
    by_member: dict[str, list[PointReading]] = {}
    for device, seq in found:
        try:
            signed = await _signed_reading(store, device, seq, log_key)
        except MeterchainError as exc:
            report.problems.append(f"reading {device}#{seq}: {exc}")
            continue
        r = signed.reading
        quality = QUALITY_OF_READING.get(r.quality.value, Quality.ESTIMATED)
        for point, b_device, b_meter, valid_from, valid_to in bindings:
            if point in members and (b_device, b_meter) == (device, r.meter) \
                    and valid_from <= r.end <= (OPEN_END if valid_to is None else valid_to):
                by_member.setdefault(point, []).append(PointReading(
                    point, device, seq, r.meter, r.end, r.import_wh, r.export_wh,
                    leaf_hash(signed.to_cbor()), quality, valid_from))
        report.readings += 1
    if report.problems:
        return report
    report.passed.append("readings" if log_key is None else "reading-bundles")
    if log_key is not None:
        report.problems += await _points_assigned(
            store, [r for found_readings in by_member.values() for r in found_readings], log_key)
        if report.problems:
            return report
        report.passed.append("point-assigned")

    rows: list[MemberInterval] = []
    seconds = row.interval_seconds
    for member in settled.interval.member_ids:
        readings = sorted(by_member.get(member, []), key=lambda x: (x.end, x.binding_from))
        if not readings:
            rows.append(MemberInterval(member, 0, 0, Quality.MISSING))
            continue
        if len(readings) != 2:
            report.problems.append(f"member {member}: {len(readings)} readings, expected the one "
                                   "before and the one after the interval")
            continue
        try:
            rows.append(member_interval(readings[0], readings[1], interval_start, seconds))
        except MeterchainError as exc:
            report.problems.append(f"member {member}: {exc}")
    if report.problems:
        return report
    interval = IntervalInput.from_members(interval_start, rows)
    if not settled.same_energy(interval):
        report.problems.append("the energy derived from the readings differs from the stored input")
    report.passed.append("energy")
    result = settle_interval(settled.community(), interval, settled.listings,
                             revision=row.revision, supersedes=row.supersedes)
    report.digest = result.digest
    if result.digest != report.logged_digest:
        report.problems.append(f"re-settled digest {result.digest.hex()} differs from the logged "
                               f"{(report.logged_digest or b'').hex()}")
    else:
        report.passed.append("digest")
    return report
