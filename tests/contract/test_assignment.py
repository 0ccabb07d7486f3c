"""Assignment leaves (docs/format.md §5.1, issue 17): the salted commitment and its test vector,
strict fields, and the ``point-assigned`` check of utility batches: an entry moved to another
metering point fails, naming the check."""

from __future__ import annotations

import base64
from typing import Any

import cbor2
import pytest
from meterchain.contract import merkle, signing
from meterchain.contract.assignment import (
    Assignment,
    AssignmentKind,
    AssignmentLeaf,
    AssignmentOpening,
    commitment,
    meter_point_at,
)
from meterchain.contract.bundle import Bundle, BundleError, verify_bundle
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf, parse_leaf
from meterchain.contract.message import sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.policy import (
    AllOf,
    AssignmentsIncluded,
    Evidence,
    LoggedLeaf,
    LoggedOpening,
    PointAssigned,
    PointClaim,
    VerificationError,
)
from meterchain.contract.utility_batch import BATCH_TYPE, BatchError, verify_page

from tests.support.contract import make_reading

#: The test vector of docs/format.md §5.1.
VECTOR = Assignment(AssignmentKind.METER, "DE0001", 1_767_225_600, None, 1_767_225_600,
                    device="gw-0001", meter="1ESY1160000001")
VECTOR_SALT = bytes(range(32))
VECTOR_FIELDS = (
    "a86174781f6d65746572636861696e2f61737369676e6d656e742d6669656c64732f763162746ff6636465766767"
    "772d303030316466726f6d1a6955b900646b696e64656d657465726474696d651a6955b900656d657465726e3145"
    "53593131363030303030303165706f696e7466444530303031"
)
VECTOR_COMMIT = "4f26ee3165ddc1f03c798d81ac4b3aa78c8c58bf1f86086b79861b5155b429c3"
VECTOR_LEAF_HASH = "d9a66c3572150ca5b18a1b59de2471ee96a3b488a24dbb2ec1f8c904f1b27ff3"


def test_the_documented_test_vector() -> None:
    opening = AssignmentOpening(VECTOR_SALT, VECTOR.to_cbor())
    assert opening.fields.hex() == VECTOR_FIELDS
    assert commitment(VECTOR_SALT, opening.fields).hex() == VECTOR_COMMIT
    assert merkle.leaf_hash(opening.leaf).hex() == VECTOR_LEAF_HASH
    assert opening.assignment == VECTOR
    leaf = parse_leaf(opening.leaf)
    assert leaf == AssignmentLeaf(bytes.fromhex(VECTOR_COMMIT))
    # An independent encoder (cbor2, canonical) gives the same bytes.
    assert cbor2.dumps(cbor2.loads(opening.fields), canonical=True) == opening.fields
    assert cbor2.loads(opening.leaf) == {"t": "meterchain/assignment/v1",
                                         "commit": bytes.fromhex(VECTOR_COMMIT)}


def test_a_fresh_opening_is_salted_so_equal_fields_give_unrelated_leaves() -> None:
    first, second = AssignmentOpening.new(VECTOR), AssignmentOpening.new(VECTOR)
    assert first.fields == second.fields and first.salt != second.salt
    assert len(first.salt) == 32 and first.leaf != second.leaf
    # The leaf alone says nothing of the fields: a guess without the salt does not match it.
    assert merkle.leaf_hash(AssignmentLeaf(commitment(bytes(32), VECTOR.to_cbor())).to_cbor()) \
        != merkle.leaf_hash(first.leaf)


def test_fields_are_strict() -> None:
    occupancy = Assignment(AssignmentKind.OCCUPANCY, "DE0001", 10, 20, 30, household="h-1")
    assert Assignment.from_cbor(occupancy.to_cbor()) == occupancy
    fields = cbor2.loads(VECTOR.to_cbor())
    for change in ({"extra": 1}, {"to": 1_767_225_600}, {"household": "h-1"}, {"kind": "tenant"},
                   {"dev": "no spaces"}, {"from": -1}, {"point": ""}):
        with pytest.raises((FieldError, EncodingError)):
            Assignment.from_cbor(cbor2.dumps({**fields, **change}, canonical=True))
    with pytest.raises(FieldError):
        commitment(b"short", VECTOR.to_cbor())
    with pytest.raises(FieldError):
        parse_leaf(cbor2.dumps({"t": "meterchain/assignment/v1", "commit": b"x" * 31}, canonical=True))


def _binding(point: str, start: int, stop: int | None, meter: str = "M-1") -> Assignment:
    return Assignment(AssignmentKind.METER, point, start, stop, 5, device="gw-1", meter=meter)


def test_the_latest_leaf_of_a_binding_decides_its_end() -> None:
    opened, ended = _binding("mp-1", 100, None), _binding("mp-1", 100, 200)
    assert meter_point_at([opened], "gw-1", "M-1", 250) == ["mp-1"]
    assert meter_point_at([opened, ended], "gw-1", "M-1", 250) == []
    assert meter_point_at([opened, ended, _binding("mp-2", 200, None)], "gw-1", "M-1", 250) == ["mp-2"]
    assert meter_point_at([opened, ended], "gw-1", "M-1", 199) == ["mp-1"]
    assert meter_point_at([opened], "gw-1", "M-2", 150) == []


class _Log:
    """A small log: one device, its meter bound to mp-1 from 0 (and ended, then bound to mp-2,
    at ``moved``), the readings, one checkpoint over them."""

    def __init__(self, moved: int | None = None) -> None:
        self.signer = signing.CryptographySigner(signing.generate_private_key_pem())
        self.log_key = NoteSigner.generate("log.meterchain.test")
        self.leaves: list[bytes] = [
            DeviceLeaf("gw-1", DeviceEvent.ENROL, self.signer.public_key_der, 1, 1_700_000_000).to_cbor()]
        self.openings: list[tuple[int, AssignmentOpening]] = []
        self._open(_binding("mp-1", 0, None, "SDM630-0001"))
        if moved is not None:
            self._open(_binding("mp-1", 0, moved, "SDM630-0001"))
            self._open(_binding("mp-2", moved, None, "SDM630-0001"))
        self.readings = [sign_reading(make_reading(self.signer, seq), self.signer) for seq in (1, 2, 3)]
        self.first_reading = len(self.leaves)
        self.leaves += [r.to_cbor() for r in self.readings]
        self.hashes = [merkle.leaf_hash(leaf) for leaf in self.leaves]
        root = merkle.root_from_leaf_hashes(self.hashes)
        self.checkpoint = Checkpoint("log.meterchain.test", len(self.leaves), root)
        self.note = self.checkpoint.sign(self.log_key)

    def _open(self, assignment: Assignment) -> None:
        opening = AssignmentOpening.new(assignment)
        self.openings.append((len(self.leaves), opening))
        self.leaves.append(opening.leaf)

    def proof(self, index: int) -> list[bytes]:
        return merkle.inclusion_proof(index, self.hashes)

    def page(self, points: list[str | None]) -> dict[str, Any]:
        """A utility batch page (CBOR form) over the whole log, each reading said to count for
        the given point."""
        return {
            "t": BATCH_TYPE, "from": 0, "to": len(self.leaves), "old": None, "new": self.note,
            "consistency": [], "cursor": 0, "next": None,
            "keys": [{"index": 0, "leaf": self.leaves[0], "proof": self.proof(0)}],
            "assignments": [{"index": i, "salt": o.salt, "fields": o.fields, "proof": self.proof(i)}
                            for i, o in self.openings],
            "entries": [{"index": self.first_reading + k, "device": "gw-1", "seq": r.reading.seq,
                         "point": point, "message": r.to_cbor(),
                         "proof": self.proof(self.first_reading + k)}
                        for k, (r, point) in enumerate(zip(self.readings, points, strict=True))],
        }


def _verify(log: _Log, doc: dict[str, Any]) -> list[str | None]:
    page = verify_page(cbor2.dumps(doc, canonical=True), log.log_key.verifier)
    return [e.point for e in page.entries]


def test_a_batch_proves_each_entrys_point_and_a_moved_entry_fails_naming_the_check() -> None:
    log = _Log()
    assert _verify(log, log.page(["mp-1", "mp-1", "mp-1"])) == ["mp-1", "mp-1", "mp-1"]
    assert _verify(log, log.page(["mp-1", None, "mp-1"])) == ["mp-1", None, "mp-1"]  # no claim
    with pytest.raises(BatchError) as caught:
        _verify(log, log.page(["mp-1", "mp-2", "mp-1"]))
    assert caught.value.check == "point-assigned" and caught.value.context["index"] == log.first_reading + 1
    assert "ties gw-1/SDM630-0001 to mp-1, not mp-2" in str(caught.value)
    # Without the openings nothing proves the point; forged openings are not in the log.
    stripped = log.page(["mp-1", "mp-1", "mp-1"])
    stripped["assignments"] = []
    with pytest.raises(BatchError) as caught:
        _verify(log, stripped)
    assert caught.value.check == "point-assigned"
    forged = log.page(["mp-2", "mp-2", "mp-2"])
    forged["assignments"][0]["fields"] = _binding("mp-2", 0, None, "SDM630-0001").to_cbor()
    with pytest.raises(BatchError) as caught:
        _verify(log, forged)
    assert caught.value.check == "assignment-inclusion"
    # A version-1 page (no openings) is refused: stripping the proofs cannot downgrade a page.
    old = log.page(["mp-2", "mp-2", "mp-2"])
    del old["assignments"]
    old["t"] = "meterchain/utility-batch/v1"
    with pytest.raises(BatchError) as caught:
        _verify(log, old)
    assert caught.value.check == "encoding"


def test_a_meter_exchange_moves_readings_to_the_new_point_at_the_logged_time() -> None:
    ends = [make_reading(signing.CryptographySigner(signing.generate_private_key_pem()), s).end
            for s in (1, 2, 3)]
    log = _Log(moved=ends[1])  # readings ending at or after `moved` count for mp-2
    assert _verify(log, log.page(["mp-1", "mp-2", "mp-2"])) == ["mp-1", "mp-2", "mp-2"]
    with pytest.raises(BatchError) as caught:
        _verify(log, log.page(["mp-1", "mp-1", "mp-2"]))
    assert caught.value.check == "point-assigned"
    # Without the end leaf the old binding looks open: two points at once is refused too.
    doc = log.page(["mp-1", "mp-2", "mp-2"])
    doc["assignments"].pop(1)
    with pytest.raises(BatchError) as caught:
        _verify(log, doc)
    assert caught.value.check == "point-assigned" and "several points" in str(caught.value)


def test_the_checks_compose_in_the_policy() -> None:
    log = _Log()
    evidence = Evidence(checkpoint=log.checkpoint,
                        logged_assignments=[LoggedOpening(o, i, tuple(log.proof(i))) for i, o in log.openings],
                        claim=PointClaim.of_reading("mp-1", log.readings[0]))
    AllOf(AssignmentsIncluded(), PointAssigned()).verify(evidence)
    assert evidence.passed == ["assignment-inclusion", "point-assigned"]
    with pytest.raises(VerificationError) as caught:
        PointAssigned().verify(Evidence(claim=PointClaim.of_reading("mp-1", log.readings[0])))
    assert caught.value.check == "point-assigned" and "nothing to check" in str(caught.value)


def test_a_version_2_bundle_proves_the_point_and_fails_a_moved_one() -> None:
    log = _Log()
    index = log.first_reading + 1
    reading = LoggedLeaf(log.leaves[index], index, tuple(log.proof(index)))
    keys = (LoggedLeaf(log.leaves[0], 0, tuple(log.proof(0))),)
    opened = tuple(LoggedOpening(o, i, tuple(log.proof(i))) for i, o in log.openings)
    plain = Bundle(reading, keys, log.note)
    assert "meterchain/bundle/v1" in str(cbor2.loads(base64.b64decode(plain.to_text().split("\n")[1][6:])))
    assert verify_bundle(plain.to_text(), log.log_key.verifier).point is None  # claims no point

    proven = verify_bundle(Bundle(reading, keys, log.note, "mp-1", opened).to_text(), log.log_key.verifier)
    assert proven.point == "mp-1" and proven.passed[-2:] == ["assignment-inclusion", "point-assigned"]
    assert Bundle.parse(Bundle(reading, keys, log.note, "mp-1", opened).to_text()).assignments == opened
    for point, assignments, check in (("mp-2", opened, "point-assigned"), ("mp-1", (), "point-assigned"),
                                      ("mp-1", (LoggedOpening(opened[0].opening, 0, opened[0].proof),),
                                       "assignment-inclusion")):
        with pytest.raises(BundleError) as caught:
            verify_bundle(Bundle(reading, keys, log.note, point, assignments).to_text(), log.log_key.verifier)
        assert caught.value.check == check
