"""OCMF records beside readings: one deterministic form, strict parsing, verification by pyocmf."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.contract import cbor, signing
from meterchain.contract.errors import EncodingError, FieldError, MeterchainError, SignatureError
from meterchain.contract.message import SignedReading, parse_message, sign_reading
from meterchain.contract.ocmf import (
    PAYLOAD_PREFIX,
    OcmfReading,
    build_ocmf,
    meter_status,
    parse_ocmf,
    sign_ocmf,
    verify_ocmf,
)
from meterchain.contract.policy import VerificationError, verify_reading
from meterchain.contract.reading import (
    EXPORT_OBIS,
    IMPORT_OBIS,
    MAX_SAFE_INT,
    ClockSync,
    Quality,
    Reading,
    Register,
    StatusFlag,
)

SIGNER = signing.CryptographySigner(signing.generate_private_key_pem())
OTHER = signing.CryptographySigner(signing.generate_private_key_pem())
GATEWAY = {"gateway_id": "meterchain agent", "gateway_version": "0.1.0"}


def reading(**overrides: object) -> Reading:
    fields: dict[str, object] = {
        "device": "gw-1",
        "key_id": signing.key_id(SIGNER.public_key_der),
        "seq": 7,
        "meter": "SDM630-0001",
        "start": 1_700_000_100 - 900,
        "end": 1_700_000_100,
        "registers": {
            IMPORT_OBIS: Register(1_234_567, "Wh"),
            EXPORT_OBIS: Register(5, "Wh"),
            "1-0:1.8.1": Register(1_000, "Wh"),
            "1-0:3.8.0": Register(9, "varh"),
        },
    }
    fields.update(overrides)
    return Reading(**fields)  # type: ignore[arg-type]


def record(r: Reading | None = None, signer: signing.Signer = SIGNER) -> str:
    return sign_ocmf(build_ocmf(r or reading(), **GATEWAY), signer)


# --- the form ---------------------------------------------------------------------------------

GOLDEN_PAYLOAD = (
    '{"FV":"1.0","GI":"meterchain agent","GS":"gw-1","GV":"0.1.0","PG":"F7","MS":"SDM630-0001",'
    '"IS":false,"IT":"NONE","RD":['
    '{"TM":"2023-11-14T22:15:00,000+0000 S","RV":1234.567,"RI":"1-0:1.8.0","RU":"kWh","EF":"","ST":"G"},'
    '{"TM":"2023-11-14T22:15:00,000+0000 S","RV":1.000,"RI":"1-0:1.8.1","RU":"kWh","EF":"","ST":"G"},'
    '{"TM":"2023-11-14T22:15:00,000+0000 S","RV":0.005,"RI":"1-0:2.8.0","RU":"kWh","EF":"","ST":"G"}]}'
)


def test_payload_is_the_documented_form() -> None:
    """Key order per the spec's tables, Wh registers by OBIS code, varh left out, UTC, kWh exact."""
    assert build_ocmf(reading(), **GATEWAY) == GOLDEN_PAYLOAD
    assert json.loads(GOLDEN_PAYLOAD)["RD"][0]["TM"].endswith("+0000 S")


def test_payload_is_deterministic_whatever_the_register_order() -> None:
    shuffled = dict(reversed(list(reading().registers.items())))
    assert build_ocmf(reading(registers=shuffled), **GATEWAY) == build_ocmf(reading(), **GATEWAY)
    assert build_ocmf(reading(), **GATEWAY) == build_ocmf(reading(), **GATEWAY)


def test_round_trip() -> None:
    text = record()
    parsed = verify_ocmf(text, SIGNER.public_key_der)
    assert parsed.text == text
    assert parsed.payload_json == GOLDEN_PAYLOAD
    assert parsed.payload.gateway_serial == "gw-1" and parsed.payload.meter_serial == "SDM630-0001"
    assert parsed.payload.fiscal_page == 7
    assert parsed.payload.readings[0] == OcmfReading(
        1_700_000_100, "S", IMPORT_OBIS, 1_234_567, "", "G"
    )
    assert [r.obis for r in parsed.payload.readings] == [IMPORT_OBIS, "1-0:1.8.1", EXPORT_OBIS]
    assert parse_ocmf(text.encode("ascii")) == parsed


def test_fiscal_page_defaults_to_seq_and_can_be_given() -> None:
    assert '"PG":"F12"' in build_ocmf(reading(seq=12), **GATEWAY)
    assert '"PG":"F3"' in build_ocmf(reading(seq=12), fiscal_page=3, **GATEWAY)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, MAX_SAFE_INT),
    st.integers(0, MAX_SAFE_INT),
    st.integers(1, 253_402_300_799),  # up to 9999-12-31T23:59:59Z
    st.sampled_from(list(ClockSync)),
)
def test_values_and_times_survive_exactly(imp: int, exp: int, end: int, clock: ClockSync) -> None:
    r = reading(
        registers={IMPORT_OBIS: Register(imp, "Wh"), EXPORT_OBIS: Register(exp, "Wh")},
        start=end - 1,
        end=end,
        clock=clock,
    )
    payload = build_ocmf(r, **GATEWAY)
    parsed = parse_ocmf(sign_ocmf(payload, SIGNER)).payload
    assert [(x.obis, x.value_wh, x.time) for x in parsed.readings] == [
        (IMPORT_OBIS, imp, end),
        (EXPORT_OBIS, exp, end),
    ]
    # the number literal is exact kWh: parsing it as a decimal gives back the Wh
    rv = json.loads(payload, parse_float=Decimal)["RD"][0]["RV"]
    assert rv * 1000 == imp


@pytest.mark.parametrize(
    ("clock", "letter"),
    [
        (ClockSync.SYNCED, "S"),
        (ClockSync.DRIFTED, "I"),
        (ClockSync.UNSYNCED, "U"),
        (ClockSync.UNKNOWN, "U"),
    ],
)
def test_time_carries_the_sync_status(clock: ClockSync, letter: str) -> None:
    parsed = parse_ocmf(record(reading(clock=clock))).payload
    assert {r.time_status for r in parsed.readings} == {letter}


@pytest.mark.parametrize(
    ("status", "quality", "expected"),
    [
        (0, Quality.MEASURED, ("G", "")),
        (StatusFlag.BACKFILLED | StatusFlag.POWER_FAILURE, Quality.MEASURED, ("G", "")),
        (0, Quality.ESTIMATED, ("S", "")),
        (0, Quality.SUBSTITUTED, ("S", "")),
        (StatusFlag.METER_ERROR, Quality.SUBSTITUTED, ("E", "E")),
        (StatusFlag.METER_EXCHANGED | StatusFlag.METER_ERROR, Quality.MEASURED, ("X", "E")),
        (StatusFlag.TAMPER | StatusFlag.METER_EXCHANGED, Quality.MEASURED, ("M", "E")),
    ],
)
def test_status_comes_from_the_flags(
    status: int, quality: Quality, expected: tuple[str, str]
) -> None:
    r = reading(status=status, quality=quality)
    assert meter_status(r) == expected
    first = parse_ocmf(record(r)).payload.readings[0]
    assert (first.status, first.error_flags) == expected


@pytest.mark.parametrize(
    ("overrides", "gateway", "field"),
    [
        ({"meter": "SDM|630"}, GATEWAY, "MS"),
        ({}, {"gateway_id": "a|b", "gateway_version": "1"}, "GI"),
        ({}, {"gateway_id": "", "gateway_version": "1"}, "GI"),
        ({}, {"gateway_id": "agent", "gateway_version": "vé"}, "GV"),
        ({}, {**GATEWAY, "fiscal_page": 0}, "PG"),
        ({}, {**GATEWAY, "fiscal_page": True}, "PG"),
        ({"start": 253_402_300_800, "end": 253_402_300_801}, GATEWAY, "TM"),
        ({"start": MAX_SAFE_INT - 1, "end": MAX_SAFE_INT}, GATEWAY, "TM"),
    ],
)
def test_build_refuses_what_ocmf_cannot_say(overrides: dict, gateway: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(FieldError) as err:
        build_ocmf(reading(**overrides), **gateway)
    assert err.value.context["field"] == field


def test_meter_serial_with_json_specials_is_escaped_and_round_trips() -> None:
    r = reading(meter='SN"7\\x')
    parsed = verify_ocmf(record(r), SIGNER.public_key_der)
    assert parsed.payload.meter_serial == 'SN"7\\x'


# --- verification ------------------------------------------------------------------------------


def test_wrong_key_fails() -> None:
    with pytest.raises(SignatureError):
        verify_ocmf(record(), OTHER.public_key_der)


def test_tampered_value_fails() -> None:
    tampered = record().replace('"RV":1234.567', '"RV":1234.568')
    parse_ocmf(tampered)  # still well formed
    with pytest.raises(SignatureError):
        verify_ocmf(tampered, SIGNER.public_key_der)


def test_every_flipped_byte_is_refused() -> None:
    data = record().encode("ascii")
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(MeterchainError):
            verify_ocmf(bytes(tampered), SIGNER.public_key_der)


def test_high_s_signature_is_refused() -> None:
    parsed = parse_ocmf(record())
    r, s = signing.parse_signature(parsed.signature)
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    high = encode_dss_signature(r, signing.P256_ORDER - s)
    text = parsed.text.replace(parsed.signature.hex().upper(), high.hex().upper())
    with pytest.raises(SignatureError) as err:
        parse_ocmf(text)
    assert err.value.check == "low-s"


def test_ecdsa_fallback_signer_produces_verifiable_records() -> None:
    pem = signing.generate_private_key_pem()
    fallback = signing.EcdsaSigner(pem)
    text = record(reading(key_id=signing.key_id(fallback.public_key_der)), fallback)
    verify_ocmf(text, fallback.public_key_der)


# --- strict parsing ----------------------------------------------------------------------------


def _variants() -> list[str]:
    good = record()
    payload = good.split("|")[1]
    obj = json.loads(payload)
    return [
        good.replace('"FV":"1.0",', '"FV": "1.0",'),  # whitespace
        good.replace('"GI":"meterchain agent","GS":"gw-1"', '"GS":"gw-1","GI":"meterchain agent"'),
        good.replace('"GS":"gw-1"', '"GS":"g\\u0077-1"'),  # an escape where none is needed
        good.replace('"RV":1234.567', '"RV":1234.5670'),
        good.replace('"RV":1234.567', '"RV":1.234567e3'),
        good.replace('"RV":0.005', '"RV":5'),
        good.replace('"RV":0.005', '"RV":"0.005"'),
        good.replace('"RV":0.005', '"RV":NaN'),
        good.replace("+0000 S", "+0100 S", 1),
        good.replace(",000+0000 S", ",000+0000 Q", 1),
        good.replace("2023-11-14T22", "2023-02-30T22", 1),
        good.replace('"PG":"F7"', '"PG":"T7"'),
        good.replace('"PG":"F7"', '"PG":"F07"'),
        good.replace('"IS":false', '"IS":true'),
        good.replace('"ST":"G"', '"ST":"Z"', 1),
        good.replace('"EF":""', '"EF":"X"', 1),
        good.replace('"RU":"kWh"', '"RU":"Wh"', 1),
        good.replace('"RI":"1-0:1.8.0"', '"RI":"1-0:1.8.256"'),
        good.replace('"MS":"SDM630-0001"', '"MS":"SDM630-0001","MS":"x"'),
        good.replace('"SE":"hex"', '"SE":"base64"'),
        good.replace('"SA":"ECDSA-secp256r1-SHA256"', '"SA":"ECDSA-secp256k1-SHA256"'),
        good.replace(good.split('"SD":"')[1], good.split('"SD":"')[1].lower()),  # lower-case hex
        good + "|3059301306072A",  # a key appended as a fourth section
        "OCMF|" + json.dumps(obj) + "|" + good.split("|")[2],  # json.dumps spacing
        "OCMF|" + json.dumps({**obj, "RD": []}, separators=(",", ":")) + "|" + good.split("|")[2],
        "ocmf" + good[4:],
        good.replace('"TM":"2023', '"TM":"0000'),
        good.replace('"TM":"2023', '"TM":"1969'),
        "OCMF|" + "[" * 1500 + "]" * 1500 + "|{}",
        "OCMF|{}|{}",
        "",
    ]


@pytest.mark.parametrize("text", _variants())
def test_non_canonical_or_foreign_records_are_refused(text: str) -> None:
    with pytest.raises((EncodingError, FieldError, SignatureError)):
        parse_ocmf(text)


@pytest.mark.parametrize(
    "value", [b"OCMF|\xff|{}", 'OCMF|{"FV":"\u00e9"}|{}', "x" * 5000, None, 12, b"\x00"]
)
def test_bad_input_types_and_sizes_are_typed_errors(value: object) -> None:
    with pytest.raises(EncodingError):
        parse_ocmf(value)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_junk_never_escapes_as_anything_but_a_typed_error(data: str | bytes) -> None:
    prefix = "OCMF|" if isinstance(data, str) else b"OCMF|"
    for candidate in (data, prefix + data):  # type: ignore[operator]
        with contextlib.suppress(MeterchainError):
            parse_ocmf(candidate)


def test_sign_refuses_payloads_not_in_our_form() -> None:
    with pytest.raises(EncodingError):
        sign_ocmf(GOLDEN_PAYLOAD.replace(",", ", ", 1), SIGNER)
    with pytest.raises(MeterchainError):
        sign_ocmf(reading().to_cbor().hex(), SIGNER)


# --- never mistaken for a reading --------------------------------------------------------------


def test_the_two_signed_forms_differ_from_the_first_byte() -> None:
    r = reading()
    assert r.to_cbor()[:3] == b"\xab\x61\x74"
    assert build_ocmf(r, **GATEWAY).encode("ascii").startswith(PAYLOAD_PREFIX)
    assert PAYLOAD_PREFIX[0] == 0x7B != r.to_cbor()[0]


def test_an_ocmf_signature_never_verifies_as_a_reading_and_vice_versa() -> None:
    r = reading()
    signed = sign_reading(r, SIGNER)
    ocmf = parse_ocmf(record(r))
    payload_bytes = ocmf.payload_json.encode("ascii")

    # The OCMF signature over the reading's bytes: not the bytes it signed, so it fails.
    with pytest.raises(VerificationError) as failed:
        verify_reading(SignedReading(r, signed.reading_bytes, ocmf.signature), SIGNER.public_key_der)
    assert failed.value.check == "signature"
    # A message carrying the OCMF payload as its "reading" is not a reading at all.
    with pytest.raises(EncodingError):
        parse_message(cbor.encode([payload_bytes, ocmf.signature]))
    # The reading's signature in an OCMF record fails over the payload bytes.
    swapped = ocmf.text.replace(ocmf.signature.hex().upper(), signed.signature.hex().upper())
    with pytest.raises(SignatureError):
        verify_ocmf(swapped, SIGNER.public_key_der)
    # Reading bytes are not an OCMF payload, whichever way they are written.
    for text in (signed.reading_bytes.decode("latin-1"), signed.reading_bytes.hex()):
        with pytest.raises(EncodingError):
            parse_ocmf(f"OCMF|{text}|{ocmf.text.split('|')[2]}")
    with pytest.raises(EncodingError):
        parse_ocmf(signed.to_cbor())
    # And each still verifies in its own form with the same key.
    verify_reading(signed, SIGNER.public_key_der)
    ocmf.verify(SIGNER.public_key_der)


# --- interoperability: pyocmf (test-only dependency) -------------------------------------------


def test_pyocmf_parses_and_verifies_our_record() -> None:
    pyocmf = pytest.importorskip("pyocmf")
    r = reading(clock=ClockSync.DRIFTED, status=StatusFlag.METER_ERROR)
    text = record(r)
    theirs = pyocmf.OCMF.from_string(text, strict=True)  # strict: any spec deviation raises
    assert theirs.verify_signature(SIGNER.public_key_der.hex()) is True
    assert theirs.verify_signature(OTHER.public_key_der.hex()) is False

    payload = theirs.payload
    assert (payload.PG, payload.GS, payload.MS, payload.IS) == ("F7", "gw-1", "SDM630-0001", False)
    assert str(theirs.signature.SA) == "ECDSA-secp256r1-SHA256"
    ours = parse_ocmf(text).payload.readings
    assert len(payload.RD) == len(ours) == 3
    for their, our in zip(payload.RD, ours, strict=True):
        assert our.value_wh == their.RV * 1000
        assert str(their.RI) == our.obis and str(their.RU) == "kWh"
        assert int(their.TM.timestamp.timestamp()) == r.end
        assert str(their.TM.status) == "I" and str(their.ST) == "E" and their.EF == "E"


def test_pyocmf_rejects_a_tampered_record() -> None:
    pyocmf = pytest.importorskip("pyocmf")
    tampered = record().replace('"RV":0.005', '"RV":0.006')
    assert (
        pyocmf.OCMF.from_string(tampered, strict=True).verify_signature(SIGNER.public_key_der.hex())
        is False
    )
