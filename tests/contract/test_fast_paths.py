"""The per-message fast paths (issue 20) accept exactly what the plain strict paths accept.

Each fast path is checked against a reference that is the code it replaced: the strict decoder
that re-encoded canonically, ``cryptography``'s DER decode and re-encode, the OBIS regex with its
group check. Inputs are valid encodings, deliberately non-deterministic ones (non-minimal heads,
unsorted keys, indefinite lengths) and mutations of both, so a fast path that let through
non-canonical CBOR, a malformed or high-S signature, or an out-of-range OBIS group fails here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.contract import cbor, signing
from meterchain.contract.errors import EncodingError, FieldError, MeterchainError
from meterchain.contract.message import parse_message, sign_reading
from meterchain.contract.reading import OBIS_RE, ClockSync, Quality, Reading, _check_obis, _enum

from tests.contract.test_contract_reading import readings

Verdict = tuple[str, object]
#: Each test compares two implementations; timing is not what they test (deadline=None: a loaded
#: machine must not fail an example).


def reference_decode(data: bytes) -> object:
    """The strict decoder before issue 20: decode, check the model, re-encode canonically."""
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise EncodingError("not valid CBOR") from None
    cbor._check_model(value, depth=0)
    if cbor2.dumps(value, canonical=True) != data:
        raise EncodingError("not deterministic")
    return value


def verdict(fn: Callable[[bytes], object], data: bytes) -> Verdict:
    try:
        return ("ok", fn(data))
    except EncodingError:
        return ("refused", None)


# ----------------------------------------------------------------------------- encoding inputs

scalars = (
    st.integers(-(2**64) - 2, 2**64 + 2) | st.binary(max_size=30) | st.text(max_size=30) | st.booleans()
    | st.none() | st.floats(allow_nan=False, width=16)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)


def loose_encode(value: Any, widen: Callable[[], bool], shuffle: Callable[[list[Any]], list[Any]]) -> bytes:
    """CBOR for ``value`` with heads optionally one size wider than needed and map keys in any
    order: deterministic only when nothing was widened or reordered."""

    def head(major: int, n: int) -> bytes:
        sizes = [(24, 0, ""), (2**8, 24, ">B"), (2**16, 25, ">H"), (2**32, 26, ">I"), (2**64, 27, ">Q")]
        fit = next(i for i, (limit, _, _) in enumerate(sizes) if n < limit)
        if fit < len(sizes) - 1 and widen():
            fit += 1
        _, info, fmt = sizes[fit]
        return bytes([major << 5 | (n if fit == 0 else info)]) + (struct.pack(fmt, n) if fmt else b"")

    if isinstance(value, bool | float | None) or (isinstance(value, int) and not -(2**64) <= value < 2**64):
        return cbor2.dumps(value)  # one form only, or refused anyway (floats, bignums)
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(loose_encode(v, widen, shuffle) for v in value)
    items = shuffle(list(value.items()))
    return head(5, len(items)) + b"".join(
        loose_encode(k, widen, shuffle) + loose_encode(v, widen, shuffle) for k, v in items)


@st.composite
def encodings(draw: st.DrawFn) -> bytes:
    """Deterministic, loosely encoded or mutated CBOR of a random value."""
    value = draw(values)
    how = draw(st.sampled_from(["canonical", "loose", "plain", "mutated", "indefinite"]))
    if how == "loose":
        return loose_encode(value, lambda: draw(st.booleans()), lambda items: draw(st.permutations(items)))
    if how == "plain":
        return cbor2.dumps(value)  # keys in insertion order, floats wide
    if how == "indefinite" and isinstance(value, list):
        return b"\x9f" + b"".join(cbor2.dumps(v, canonical=True) for v in value) + b"\xff"
    data = bytearray(cbor2.dumps(value, canonical=True))
    if how == "mutated" and data:
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data.insert(at, draw(st.integers(0, 255)))
        elif op == "delete":
            del data[at]
        else:
            del data[at:]
    return bytes(data)


@given(encodings())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_strict_decode_accepts_exactly_what_the_canonical_re_encoding_did(data: bytes) -> None:
    if not data:
        return
    assert verdict(cbor.decode, data) == verdict(reference_decode, data)


@given(st.binary(min_size=1, max_size=60))
@settings(max_examples=500, deadline=None)
def test_strict_decode_agrees_on_junk(data: bytes) -> None:
    assert verdict(cbor.decode, data) == verdict(reference_decode, data)


@pytest.mark.parametrize("keys", [["b", "a"], ["aa", "b"], ["é", "z"], ["é", "zz"], ["ab", "aa"]])
def test_unsorted_keys_are_refused_ascii_or_not(keys: list[str]) -> None:
    data = b"".join([bytes([0xA0 | len(keys)]), *(cbor2.dumps(k) + b"\x00" for k in keys)])
    with pytest.raises(EncodingError):
        cbor.decode(data)
    assert cbor.decode(cbor2.dumps(dict.fromkeys(keys, 0), canonical=True)) == dict.fromkeys(keys, 0)


# ----------------------------------------------------------------------------- the message envelope


def reference_pair(data: bytes) -> list[bytes] | None:
    try:
        value = reference_decode(data)
    except EncodingError:
        return None
    if isinstance(value, list) and len(value) == 2 and all(type(v) is bytes for v in value):
        return value
    return None


@given(st.binary(max_size=300), st.binary(max_size=80), st.sampled_from(["canonical", "loose", "mutated"]),
       st.data())
@settings(max_examples=400, deadline=None)
def test_byte_string_pair_is_the_strict_decoders_answer(a: bytes, b: bytes, how: str, data: st.DataObject) -> None:
    if how == "loose":
        raw = loose_encode([a, b], lambda: data.draw(st.booleans()), lambda items: items)
    else:
        raw = cbor2.dumps([a, b])
        if how == "mutated":
            buf = bytearray(raw)
            at = data.draw(st.integers(0, len(buf) - 1))
            buf[at] ^= data.draw(st.integers(1, 255))
            raw = bytes(buf[: data.draw(st.integers(0, len(buf)))]) if data.draw(st.booleans()) else bytes(buf)
    assert cbor.byte_string_array(raw, 2) == reference_pair(raw)


@pytest.mark.parametrize("raw", [
    b"\x82\x40\x40", b"\x82\x41x\x40", b"\x82\x58\x17" + b"x" * 23 + b"\x40",  # the last: a wide head
    b"\x82\x59\x00\x18" + b"x" * 24 + b"\x40", b"\x82\x5f\x41x\xff\x40", b"\x83\x40\x40\x40", b"\x82\x40\x40\x00",
    b"\x82\x40", b"\x82\x40\x60", b"\x82\x40\x5c",
])
def test_byte_string_pair_edge_cases(raw: bytes) -> None:
    assert cbor.byte_string_array(raw, 2) == reference_pair(raw)


# ----------------------------------------------------------------------------- DER signatures


def reference_signature(signature: bytes) -> tuple[int, int] | str:
    """parse_signature before issue 20 (decode, range, re-encode, low-S); the error's check."""
    if not signing.MIN_SIGNATURE_SIZE <= len(signature) <= signing.MAX_SIGNATURE_SIZE:
        return "encoding"
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return "encoding"
    if not (1 <= r < signing.P256_ORDER and 1 <= s < signing.P256_ORDER):
        return "encoding"
    if encode_dss_signature(r, s) != signature:
        return "encoding"
    return "low-s" if s > signing.HALF_ORDER else (r, s)


def parsed(signature: bytes) -> tuple[int, int] | str:
    try:
        return signing.parse_signature(signature)
    except MeterchainError as exc:
        return str(exc.check)


scalar = st.one_of(st.integers(0, 2**256 + 5), st.sampled_from(
    [0, 1, 0x7F, 0x80, 0xFF, signing.HALF_ORDER, signing.HALF_ORDER + 1, signing.P256_ORDER - 1,
     signing.P256_ORDER, 2**255, 2**256 - 1]))


@st.composite
def signatures(draw: st.DrawFn) -> bytes:
    r, s = draw(scalar), draw(scalar)
    body = b""
    for n in (r, s):
        raw = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big")  # minimal two's complement
        if draw(st.integers(0, 9)) == 0:
            raw = b"\x00" + raw  # a redundant leading zero
        body += b"\x02" + bytes([len(raw)]) + raw
    der = bytearray(b"\x30" + bytes([len(body)]) + body)
    if draw(st.integers(0, 3)) == 0 and der:
        at = draw(st.integers(0, len(der) - 1))
        der[at] = draw(st.integers(0, 255))
    if draw(st.integers(0, 9)) == 0:
        der += b"\x00"
    return bytes(der)


@given(signatures())
@settings(max_examples=700, deadline=None)
def test_signature_fast_path_agrees_with_der_decode_and_re_encode(signature: bytes) -> None:
    assert parsed(signature) == reference_signature(signature)


def test_real_signatures_both_halves_of_s() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for i in range(200):
        r, s = decode_dss_signature(key.sign(i.to_bytes(4, "big"), ec.ECDSA(hashes.SHA256())))
        for s_form in (s, signing.P256_ORDER - s):
            der = encode_dss_signature(r, s_form)
            assert parsed(der) == reference_signature(der)
            assert parsed(der) == ((r, s_form) if s_form <= signing.HALF_ORDER else "low-s")


# ----------------------------------------------------------------------------- reading fields


@given(st.text(alphabet="0123456789-:.٣", min_size=9, max_size=19))
@settings(max_examples=500, deadline=None)
def test_obis_fast_match_accepts_only_what_the_regex_and_group_check_accept(obis: str) -> None:
    def reference(code: str) -> bool:
        groups = OBIS_RE.fullmatch(code)
        return groups is not None and all(int(g) <= 255 for g in groups.groups())

    try:
        _check_obis(obis)
        assert reference(obis)
    except FieldError:
        assert not reference(obis)
    reading_ok = True
    try:
        regs = {obis: [1, "Wh"], "1-0:1.8.0": [1, "Wh"], "1-0:2.8.0": [1, "Wh"]}
        Reading.from_cbor(cbor2.dumps({**cbor2.loads(_sample().to_cbor()), "regs": regs}, canonical=True))
    except FieldError:
        reading_ok = False
    assert reading_ok == reference(obis)


@pytest.mark.parametrize("group", ["0", "00", "000", "099", "199", "200", "249", "250", "255", "256", "299",
                                   "300", "999", "1000", "", "٢"])
def test_obis_group_bounds(group: str) -> None:
    code = f"1-0:{group}.8.0"
    groups = OBIS_RE.fullmatch(code)
    expected = groups is not None and all(int(g) <= 255 for g in groups.groups())
    if expected:
        _check_obis(code)
    else:
        with pytest.raises(FieldError):
            _check_obis(code)


def test_enum_fast_path_is_the_enum_call() -> None:
    for kind in (ClockSync, Quality):
        for member in kind:
            assert _enum(kind, member.value, "x") is kind(member.value) is _enum(kind, member, "x")
        with pytest.raises(FieldError):
            _enum(kind, "nonsense", "x")


def _sample() -> Reading:
    from tests.contract.test_contract_reading import base

    return base()


@given(readings, st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_whole_message_parse_agrees_with_the_reference(reading: Reading, data: st.DataObject) -> None:
    """A signed reading, then one changed byte: parse_message accepts exactly when the plain
    strict decoders accept every part."""
    signer = _signer()
    message = sign_reading(replace(reading, key_id=signing.key_id(signer.public_key_der)), signer).to_cbor()
    buf = bytearray(message)
    if data.draw(st.booleans()):
        # ECDSA signatures vary in length: draw a position independent of it, then wrap
        buf[data.draw(st.integers(0, 4095)) % len(buf)] ^= data.draw(st.integers(1, 255))
    raw = bytes(buf)

    def reference(raw: bytes) -> bool:
        pair = reference_pair(raw)
        if pair is None or isinstance(reference_signature(pair[1]), str):
            return False
        try:
            reference_decode(pair[0])
            Reading.from_cbor(pair[0])  # its fields (its decoder agrees with the reference above)
        except MeterchainError:
            return False
        return True

    try:
        got = parse_message(raw)
    except MeterchainError:
        assert not reference(raw)
    else:
        assert reference(raw) and got.to_cbor() == raw


_SIGNER: list[signing.EcdsaSigner] = []


def _signer() -> signing.EcdsaSigner:
    """RFC 6979 signatures: the same example gives the same bytes when hypothesis replays it."""
    if not _SIGNER:
        _SIGNER.append(signing.EcdsaSigner(signing.generate_private_key_pem()))
    return _SIGNER[0]


# ----------------------------------------------------------------------------- note keys


def test_cached_ed25519_keys_check_every_signature_anew() -> None:
    """One key object per key's bytes (not per verification), and no verdict is remembered."""
    from meterchain.contract.checkpoint import Checkpoint
    from meterchain.contract.errors import NoteError
    from meterchain.contract.note import NoteSigner, ed25519_public_key, verify_note

    signer = NoteSigner.generate("log.example")
    note = Checkpoint("log.example", 1, bytes(32)).sign(signer)
    assert verify_note(note, signer.verifier) == note[: note.index("\n\n") + 1]
    assert ed25519_public_key(bytes(signer.verifier.public_key)) is ed25519_public_key(signer.verifier.public_key)
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(note.replace("\n1\n", "\n2\n", 1), signer.verifier)
    impostor = NoteSigner.generate("log.example")  # same name, another key: another key hash
    with pytest.raises(NoteError, match="no signature"):
        verify_note(note, impostor.verifier)
    assert verify_note(note, signer.verifier)


def reference_b64(text: str) -> bytes | None:
    """strict_b64decode before issue 17's speed-up: validate, decode, re-encode, compare."""
    import base64
    import binascii

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None


@given(st.binary(max_size=40), st.data())
@settings(max_examples=600, deadline=None)
def test_strict_base64_accepts_exactly_the_canonical_form(raw: bytes, data: st.DataObject) -> None:
    import base64

    from meterchain.contract.note import strict_b64decode

    text = base64.b64encode(raw).decode()
    if data.draw(st.booleans()) and text:  # one character changed, dropped or added
        at = data.draw(st.integers(0, len(text) - 1))
        new = data.draw(st.sampled_from(["", "=", "A", "B", "Q", "g", "/", "+", "-", " ", "\n", "é", "==", "AA"]))
        text = text[:at] + new + text[at + data.draw(st.integers(0, 1)):]
    try:
        got: bytes | None = strict_b64decode(text)
    except ValueError:
        got = None
    assert got == reference_b64(text)
