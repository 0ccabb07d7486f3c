"""Proof bundles and ``meterchain verify``: valid bundles pass, any tampered byte is named."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from meterchain.cli.main import app
from meterchain.contract import merkle
from meterchain.contract.bundle import CHECKS, Bundle, BundleError, LoggedLeaf, verify_bundle
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf
from meterchain.contract.message import parse_message
from meterchain.contract.note import NoteSigner
from typer.testing import CliRunner

from tests.support.contract import SmallLog
from tests.support.humantime import assert_no_unix_seconds


def test_valid_bundle_passes_every_check(small_log: SmallLog) -> None:
    text = small_log.bundle(3).to_text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra ")
    result = verify_bundle(text, small_log.log_key.verifier)
    assert result.passed == list(CHECKS)
    assert result.leaf_index == 3 and result.reading.reading.seq == 2
    assert Bundle.parse(text).to_text() == text


def test_every_flipped_byte_fails_and_names_a_check(small_log: SmallLog) -> None:
    data = small_log.bundle(2).to_text().encode()
    named: Counter[str] = Counter()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(BundleError) as err:
            verify_bundle(bytes(tampered), small_log.log_key.verifier)
        assert err.value.check in CHECKS
        named[err.value.check] += 1
    # Each part of the bundle is guarded by its own check.
    assert {"encoding", "checkpoint", "signature", "inclusion", "device-inclusion"} <= set(named)


def _tampered_bundle(small_log: SmallLog, **changes: object) -> str:
    b = small_log.bundle(2)
    return Bundle(
        changes.get("reading", b.reading),  # type: ignore[arg-type]
        changes.get("device_leaves", b.device_leaves),  # type: ignore[arg-type]
        changes.get("checkpoint", b.checkpoint),  # type: ignore[arg-type]
    ).to_text()


def test_wrong_index_is_an_inclusion_failure(small_log: SmallLog) -> None:
    b = small_log.bundle(2)
    text = _tampered_bundle(small_log, reading=LoggedLeaf(b.reading.data, 3, b.reading.proof))
    with pytest.raises(BundleError) as err:
        verify_bundle(text, small_log.log_key.verifier)
    assert err.value.check == "inclusion"


def test_another_log_key_fails_the_checkpoint(small_log: SmallLog) -> None:
    with pytest.raises(BundleError) as err:
        verify_bundle(small_log.bundle(2).to_text(), NoteSigner.generate("log.meterchain.test").verifier)
    assert err.value.check == "checkpoint"


def test_high_s_is_named_low_s(small_log: SmallLog) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )
    from meterchain.contract import cbor, signing

    b = small_log.bundle(2)
    signed = parse_message(b.reading.data)
    r, s = decode_dss_signature(signed.signature)
    flipped = cbor.encode([signed.reading_bytes, encode_dss_signature(r, signing.P256_ORDER - s)])
    text = _tampered_bundle(small_log, reading=LoggedLeaf(flipped, 2, b.reading.proof))
    with pytest.raises(BundleError) as err:
        verify_bundle(text, small_log.log_key.verifier)
    assert err.value.check == "low-s" and err.value.passed == []


def test_cli_verify_prints_ok_only_for_checks_that_ran(small_log: SmallLog, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )
    from meterchain.contract import cbor, signing

    b = small_log.bundle(2)
    signed = parse_message(b.reading.data)
    r, s = decode_dss_signature(signed.signature)
    flipped = cbor.encode([signed.reading_bytes, encode_dss_signature(r, signing.P256_ORDER - s)])
    high_s = tmp_path / "high-s.tlog-proof"
    high_s.write_text(_tampered_bundle(small_log, reading=LoggedLeaf(flipped, 2, b.reading.proof)))
    moved = tmp_path / "moved.tlog-proof"
    moved.write_text(_tampered_bundle(small_log, reading=LoggedLeaf(b.reading.data, 3, b.reading.proof)))
    key = str(small_log.log_key.verifier)
    # A high-S signature fails while decoding: no check after it was run, none is reported ok.
    out = CliRunner().invoke(app, ["verify", str(high_s), "--log-key", key])
    assert out.exit_code == 1 and out.output.startswith("FAIL low-s"), out.output
    assert "ok" not in out.output.split("FAIL")[0]
    out = CliRunner().invoke(app, ["verify", str(moved), "--log-key", key])
    assert out.exit_code == 1
    assert re.findall(r"^ok +(\S+)$", out.output, re.M) == list(CHECKS[:-1]), out.output
    assert "FAIL inclusion" in out.output


def test_a_key_not_valid_for_the_sequence_is_named(small_log: SmallLog) -> None:
    """A log whose only device leaf for gw-1 is valid from sequence 2 cannot prove reading 1."""
    log_key = small_log.log_key
    late = DeviceLeaf("gw-1", DeviceEvent.ENROL, small_log.device_signer.public_key_der, 2, 0).to_cbor()
    leaves = [late, small_log.leaves[2]]
    hashes = [merkle.leaf_hash(x) for x in leaves]
    cp = Checkpoint(log_key.name, 2, merkle.root_from_leaf_hashes(hashes)).sign(log_key)
    bundle = Bundle(
        LoggedLeaf(leaves[1], 1, tuple(merkle.inclusion_proof(1, hashes))),
        (LoggedLeaf(late, 0, tuple(merkle.inclusion_proof(0, hashes))),),
        cp,
    )
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle.to_text(), log_key.verifier)
    assert err.value.check == "key-validity"


def test_another_devices_key_is_named_key_id(small_log: SmallLog) -> None:
    """Swap in a device leaf that names gw-1 but carries gw-2's key: the key id no longer matches."""
    log_key = small_log.log_key
    wrong = DeviceLeaf("gw-1", DeviceEvent.ENROL, small_log.other_signer.public_key_der, 1, 0).to_cbor()
    leaves = [wrong, small_log.leaves[2]]
    hashes = [merkle.leaf_hash(x) for x in leaves]
    cp = Checkpoint(log_key.name, 2, merkle.root_from_leaf_hashes(hashes)).sign(log_key)
    bundle = Bundle(
        LoggedLeaf(leaves[1], 1, tuple(merkle.inclusion_proof(1, hashes))),
        (LoggedLeaf(wrong, 0, tuple(merkle.inclusion_proof(0, hashes))),),
        cp,
    )
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle.to_text(), log_key.verifier)
    assert err.value.check == "key-id"


@pytest.mark.parametrize("text", ["", "hello", "c2sp.org/tlog-proof@v1\n\n", "c2sp.org/tlog-proof@v1\nindex 1\n\nx\n"])
def test_garbage_is_an_encoding_failure(small_log: SmallLog, text: str) -> None:
    with pytest.raises(BundleError) as err:
        verify_bundle(text, small_log.log_key.verifier)
    assert err.value.check == "encoding"


def test_cli_verify_exit_codes_and_named_check(small_log: SmallLog, tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "reading.tlog-proof"
    good.write_text(small_log.bundle(4).to_text())
    key_file = tmp_path / "log.pub"
    key_file.write_text(str(small_log.log_key.verifier) + "\n")

    ok = runner.invoke(app, ["verify", str(good), "--log-key", str(key_file)])
    assert ok.exit_code == 0, ok.output
    assert "verified: reading gw-1#3" in ok.output
    assert_no_unix_seconds(ok.output, "meterchain verify")
    ok_inline = runner.invoke(app, ["verify", str(good), "--log-key", str(small_log.log_key.verifier)])
    assert ok_inline.exit_code == 0

    bad = tmp_path / "tampered.tlog-proof"
    text = good.read_text()
    # Change one proof hash line (the line after "index N").
    lines = text.split("\n")
    i = next(n for n, line in enumerate(lines) if line.startswith("index ")) + 1
    lines[i] = ("B" if lines[i][0] != "B" else "C") + lines[i][1:]
    bad.write_text("\n".join(lines))
    out = runner.invoke(app, ["verify", str(bad), "--log-key", str(key_file)])
    assert out.exit_code == 1
    assert re.search(r"FAIL inclusion", out.output), out.output

    missing = runner.invoke(app, ["verify", str(tmp_path / "nope"), "--log-key", str(key_file)])
    assert missing.exit_code == 2
    badkey = runner.invoke(app, ["verify", str(good), "--log-key", "not-a-key"])
    assert badkey.exit_code == 2 and "log key" in badkey.output
