"""Control messages (contract/control.py): signed acks, their context line, rotation, leaves."""

from __future__ import annotations

import pytest
from meterchain.contract.control import (
    ACK_V2_TYPE,
    ControlError,
    ControlKeyLeaf,
    SignedAck,
    control_key_name,
    open_control,
    read_unverified,
    sign_control,
)
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import parse_leaf
from meterchain.contract.note import NoteSigner

OLD = NoteSigner.generate("example.org/control")
NEW = NoteSigner.generate("example.org/control")
LOG = NoteSigner.generate("example.org/log")


def _ack(**kwargs: object) -> SignedAck:
    values: dict[str, object] = {"device": "gw-1", "upto": 7, "rejected": ((3, "conflict", "x"),),
                                 "gaps": ((4, 5),), "time": 100, "keys": (str(NEW.verifier),)}
    values.update(kwargs)
    return SignedAck(**values)  # type: ignore[arg-type]


def test_a_signed_ack_opens_with_its_key_only() -> None:
    payload = _ack().sign([OLD])
    body, by = open_control(payload, ACK_V2_TYPE, [NEW.verifier, OLD.verifier])
    assert by == OLD.verifier and SignedAck.from_body(body) == _ack()
    with pytest.raises(ControlError, match="no trusted control key"):
        open_control(payload, ACK_V2_TYPE, [NEW.verifier])
    # The log key is another key: its signature on the same text is no control signature.
    with pytest.raises(ControlError):
        open_control(_ack().sign([LOG]), ACK_V2_TYPE, [OLD.verifier])


def test_a_tampered_ack_does_not_verify() -> None:
    payload = _ack().sign([OLD]).decode()
    forged_body = _ack(upto=1000).body()
    import base64

    text_line = payload.split("\n")[1]
    forged = payload.replace(text_line, base64.b64encode(forged_body).decode()).encode()
    with pytest.raises(ControlError, match="does not verify"):
        open_control(forged, ACK_V2_TYPE, [OLD.verifier])
    # Unverified reading (a gateway without a control key) still sees the forged body.
    assert SignedAck.from_body(read_unverified(forged, ACK_V2_TYPE)).upto == 1000


def test_the_context_line_binds_the_message_type() -> None:
    with pytest.raises(ControlError, match="unknown control message type"):
        sign_control("meterchain/other/v1", b"x", [OLD])
    note = OLD.sign_note(f"example.org/log\n{'AAAA'}\n").encode()  # a checkpoint-like text
    with pytest.raises(ControlError, match="not a meterchain/ack/v2 message"):
        open_control(note, ACK_V2_TYPE, [OLD.verifier])
    for junk in (b"", b"\xff\xfe", b"meterchain/ack/v2\nAAAA\n", b"x" * 20_000):
        with pytest.raises(ControlError):
            open_control(junk, ACK_V2_TYPE, [OLD.verifier])


def test_rotation_overlap_signs_with_both_keys() -> None:
    payload = _ack().sign([NEW, OLD])
    assert open_control(payload, ACK_V2_TYPE, [OLD.verifier])[1] == OLD.verifier
    assert open_control(payload, ACK_V2_TYPE, [NEW.verifier])[1] == NEW.verifier


def test_ack_body_bounds() -> None:
    for bad in (_ack(upto=-1), _ack(gaps=((5, 4),)), _ack(rejected=((0, "x", "y"),)),
                _ack(keys=("not a key",))):
        with pytest.raises(MeterchainError):
            SignedAck.from_body(bad.body())
    long = _ack(rejected=tuple((s, "conflict", "d" * 500) for s in range(1, 100)))
    decoded = SignedAck.from_body(long.body())
    assert len(decoded.rejected) == 32 and len(decoded.rejected[0][2]) == 120
    assert len(long.sign([OLD])) < 16_384  # one signed note


def test_control_key_leaf_is_a_typed_log_leaf() -> None:
    assert control_key_name("meterchain.local/log") == "meterchain.local/control"
    leaf = ControlKeyLeaf(str(OLD.verifier), "enrol", 1_700_000_000)
    assert parse_leaf(leaf.to_cbor()) == leaf
    with pytest.raises(MeterchainError):
        ControlKeyLeaf(str(OLD.verifier), "revoke", 1)


def test_status_v2_carries_alarms_and_v1_is_unchanged() -> None:
    from meterchain.contract import cbor
    from meterchain.contract.status import GatewayStatus, MeterHealth

    healthy = GatewayStatus("gw-1", 10, "0.1", 5, 0, 0, (MeterHealth("M1", 900, None),))
    assert cbor.decode(healthy.to_cbor())["t"] == "meterchain/status/v1"  # type: ignore[index]
    assert "alarms" not in cbor.decode(healthy.to_cbor())  # type: ignore[operator]
    alarmed = GatewayStatus("gw-1", 10, "0.1", 5, 0, 0, (), ("ack-refused:ahead", "gap"))
    data = alarmed.to_cbor()
    assert cbor.decode(data)["t"] == "meterchain/status/v2"  # type: ignore[index]
    assert GatewayStatus.from_cbor(data) == alarmed
    assert GatewayStatus.from_cbor(healthy.to_cbor()) == healthy
    bad = cbor.decode(data)
    bad["alarms"] = []  # type: ignore[index]
    with pytest.raises(MeterchainError):
        GatewayStatus.from_cbor(cbor.encode(bad))
    with pytest.raises(MeterchainError):
        GatewayStatus("gw-1", 10, "0.1", 5, 0, 0, (), ("x\n",))
