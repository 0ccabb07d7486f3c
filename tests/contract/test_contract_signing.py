"""Device signatures: low-S, strict DER, key ids, and ecdsa <-> cryptography both ways."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import ecdsa
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from ecdsa.util import sigdecode_der, sigencode_der
from meterchain.contract import signing
from meterchain.contract.errors import KeyValidityError, SignatureError
from meterchain.contract.message import (
    Identity,
    SignedReading,
    compare,
    parse_message,
    sign_reading,
)
from meterchain.contract.policy import VerificationError, verify_reading
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Register

from tests.support.contract import make_reading

PEM = signing.generate_private_key_pem()


@pytest.fixture(params=["cryptography", "ecdsa"])
def signer(request: pytest.FixtureRequest) -> signing.Signer:
    return signing.load_signer(PEM, backend=request.param)


def high_s(signature: bytes) -> bytes:
    r, s = decode_dss_signature(signature)
    return encode_dss_signature(r, signing.P256_ORDER - s)


def test_both_backends_share_the_key_and_id() -> None:
    a = signing.CryptographySigner(PEM)
    b = signing.EcdsaSigner(PEM)
    assert a.public_key_der == b.public_key_der
    assert signing.key_id(a.public_key_der) == hashlib.sha256(a.public_key_der).digest()


def test_signers_always_produce_low_s(signer: signing.Signer) -> None:
    for i in range(50):
        r, s = decode_dss_signature(signer.sign(b"reading %d" % i))
        assert s <= signing.HALF_ORDER


def test_cryptography_signature_verifies_with_ecdsa() -> None:
    sig = signing.CryptographySigner(PEM).sign(b"data")
    vk = ecdsa.VerifyingKey.from_der(signing.CryptographySigner(PEM).public_key_der)
    assert vk.verify(sig, b"data", hashfunc=hashlib.sha256, sigdecode=sigdecode_der)


def test_ecdsa_signature_verifies_with_cryptography() -> None:
    s = signing.EcdsaSigner(PEM)
    signing.verify_signature(s.public_key_der, b"data", s.sign(b"data"))


def test_plain_ecdsa_library_signature_interoperates_once_normalised() -> None:
    sk = ecdsa.SigningKey.from_pem(PEM.decode())
    raw = sk.sign(b"data", hashfunc=hashlib.sha256, sigencode=sigencode_der)
    signing.verify_signature(signing.EcdsaSigner(PEM).public_key_der, b"data", signing.normalize_low_s(raw))


def test_high_s_is_rejected_even_though_it_verifies_mathematically(signer: signing.Signer) -> None:
    sig = signer.sign(b"data")
    with pytest.raises(SignatureError) as err:
        signing.verify_signature(signer.public_key_der, b"data", high_s(sig))
    assert err.value.check == "low-s"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: s[:-1], id="truncated"),
        pytest.param(lambda s: s + b"\x00", id="trailing"),
        pytest.param(lambda s: b"\x00" * 6, id="too-short"),
        pytest.param(lambda s: s * 2, id="too-long"),
        pytest.param(lambda s: encode_dss_signature(0, 1), id="zero-r"),
        pytest.param(lambda s: encode_dss_signature(signing.P256_ORDER, 1), id="r-out-of-range"),
    ],
)
def test_malformed_signatures_are_encoding_errors(mutate) -> None:  # type: ignore[no-untyped-def]
    sig = signing.CryptographySigner(PEM).sign(b"data")
    with pytest.raises(SignatureError) as err:
        signing.parse_signature(mutate(sig))
    assert err.value.check == "encoding"


def test_wrong_key_fails_signature() -> None:
    other = signing.CryptographySigner(signing.generate_private_key_pem())
    sig = signing.CryptographySigner(PEM).sign(b"data")
    with pytest.raises(SignatureError) as err:
        signing.verify_signature(other.public_key_der, b"data", sig)
    assert err.value.check == "signature"


def test_message_round_trip_and_wrong_key_id(signer: signing.Signer) -> None:
    signed = sign_reading(make_reading(signer, 1), signer)
    parsed = parse_message(signed.to_cbor())
    assert parsed == signed
    verify_reading(parsed, signer.public_key_der)
    other = signing.CryptographySigner(signing.generate_private_key_pem())
    with pytest.raises(VerificationError) as err:
        verify_reading(parsed, other.public_key_der)
    assert err.value.check == "key-id"
    with pytest.raises(KeyValidityError):
        sign_reading(make_reading(other, 1), signer)


def test_identity_ignores_signature_bytes_and_finds_conflicts() -> None:
    s = signing.CryptographySigner(PEM)
    first = sign_reading(make_reading(s, 5), s)
    resigned = sign_reading(make_reading(s, 5), s)
    assert first.signature != resigned.signature  # randomised ECDSA
    assert compare(first, resigned) is Identity.DUPLICATE
    changed = sign_reading(
        make_reading(s, 5, registers={IMPORT_OBIS: Register(1, "Wh"), EXPORT_OBIS: Register(0, "Wh")}), s
    )
    assert compare(first, changed) is Identity.CONFLICT
    same_slot = sign_reading(make_reading(s, 6, start=first.reading.start, end=first.reading.end), s)
    assert compare(first, same_slot) is Identity.CONFLICT
    assert compare(first, sign_reading(make_reading(s, 7), s)) is Identity.NEW
    assert isinstance(first, SignedReading)


def test_gateway_without_cryptography_signs_with_ecdsa_fallback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On a gateway with no cryptography wheel the contract still imports and signs."""
    pem = tmp_path / "key.pem"
    pem.write_bytes(PEM)
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from meterchain.contract import signing\n"
        f"s = signing.load_signer(open({str(pem)!r}, 'rb').read())\n"
        "assert type(s).__name__ == 'EcdsaSigner'\n"
        "sys.stdout.write(s.sign(b'data').hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    signing.verify_signature(signing.CryptographySigner(PEM).public_key_der, b"data", bytes.fromhex(out))
