"""Device signatures: ECDSA P-256 with SHA-256, DER-encoded, low-S.

The signer normalises s to the lower half of the group order; verifiers reject high-S, because
(r, n − s) verifies too and would make one reading look like two. Signing uses ``cryptography``
(OpenSSL); :class:`EcdsaSigner` is the pure-Python fallback for gateways without a
``cryptography`` wheel (armv6), and interoperates both ways. Verification always uses
``cryptography``: the pure-Python library is open to timing side channels (CVE-2024-23342),
acceptable for a gateway's own key, never for the backend.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Protocol

from meterchain.contract.errors import KeyValidityError, SignatureError

try:  # a gateway without a cryptography wheel still signs, with the ecdsa fallback
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
        encode_dss_signature,
    )

    HAVE_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - exercised in a subprocess test
    HAVE_CRYPTOGRAPHY = False

#: Order of the P-256 group (FIPS 186-4 D.1.2.3).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HALF_ORDER = P256_ORDER // 2
#: A DER ECDSA P-256 signature is 8 to 72 bytes long.
MIN_SIGNATURE_SIZE, MAX_SIGNATURE_SIZE = 8, 72
KEY_ID_SIZE = 32


class Signer(Protocol):
    """What signs readings on a gateway: a key in a file today, a secure element tomorrow."""

    @property
    def public_key_der(self) -> bytes:
        """The public key as SubjectPublicKeyInfo DER."""
        ...

    def sign(self, data: bytes) -> bytes:
        """A low-S DER ECDSA P-256/SHA-256 signature over ``data``."""
        ...


def _need_cryptography() -> None:
    if not HAVE_CRYPTOGRAPHY:
        raise RuntimeError(
            "this needs the 'cryptography' package; without it a gateway can only sign (ecdsa)"
        )


def key_id(public_key_der: bytes) -> bytes:
    """Key id = SHA-256 of the public key's SubjectPublicKeyInfo DER."""
    return hashlib.sha256(public_key_der).digest()


def normalize_low_s(signature: bytes) -> bytes:
    """Return the low-S form of a DER signature (the one form the contract accepts)."""
    _need_cryptography()
    r, s = decode_dss_signature(signature)
    if s > HALF_ORDER:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def _strict_der_scalars(signature: bytes) -> tuple[int, int] | None:
    """(r, s) if ``signature`` is exactly the DER ``SEQUENCE { INTEGER r, INTEGER s }`` that
    ``encode_dss_signature`` writes for two positive scalars (short lengths, minimal integers,
    nothing after), else None. Byte checks only: ingest runs this per message, and decoding with
    ``cryptography`` then re-encoding to compare costs as much again (issue 20)."""
    size = len(signature)
    if not MIN_SIGNATURE_SIZE <= size <= MAX_SIGNATURE_SIZE or signature[0] != 0x30 or signature[1] != size - 2 \
            or signature[2] != 0x02:
        return None
    r_len = signature[3]
    s_at = 4 + r_len  # the tag of s
    if r_len == 0 or s_at + 2 >= size or signature[s_at] != 0x02 or s_at + 2 + signature[s_at + 1] != size:
        return None
    r_bytes, s_bytes = signature[4:s_at], signature[s_at + 2 :]
    for scalar in (r_bytes, s_bytes):
        # Positive (high bit clear) and minimal (a leading zero only before a high bit).
        if scalar[0] & 0x80 or (scalar[0] == 0 and (len(scalar) == 1 or not scalar[1] & 0x80)):
            return None
    return int.from_bytes(r_bytes, "big"), int.from_bytes(s_bytes, "big")


def parse_signature(signature: bytes) -> tuple[int, int]:
    """Parse a strict DER signature with both scalars in range and s in the lower half."""
    _need_cryptography()
    if type(signature) is bytes and (scalars := _strict_der_scalars(signature)) is not None:
        r, s = scalars
        if r < P256_ORDER and s <= HALF_ORDER:  # both >= 1: minimal and positive
            return r, s
    if not isinstance(signature, bytes):
        raise SignatureError("signature must be bytes", check="encoding")
    if not MIN_SIGNATURE_SIZE <= len(signature) <= MAX_SIGNATURE_SIZE:
        raise SignatureError(
            f"signature is {len(signature)} bytes; a DER P-256 signature has 8 to 72",
            check="encoding",
            size=len(signature),
        )
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        raise SignatureError("signature is not DER", check="encoding") from None
    if not (1 <= r < P256_ORDER and 1 <= s < P256_ORDER):
        raise SignatureError("signature scalar out of range", check="encoding")
    if encode_dss_signature(r, s) != signature:
        raise SignatureError("signature is not in strict DER form", check="encoding")
    if s > HALF_ORDER:
        raise SignatureError(
            "signature has a high S value; signers must normalise to low-S", check="low-s"
        )
    return r, s


@functools.lru_cache(maxsize=65_536)
def load_public_key(public_key_der: bytes) -> ec.EllipticCurvePublicKey:
    """Load a P-256 SubjectPublicKeyInfo, or raise :class:`KeyValidityError`.

    Cached: a backend verifies many readings per device key, and parsing the key costs as much
    as a sixth of a verification.
    """
    _need_cryptography()
    try:
        key = serialization.load_der_public_key(public_key_der)
    except Exception as exc:  # cryptography raises several kinds on bad DER
        raise KeyValidityError(f"public key is not valid SubjectPublicKeyInfo DER ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyValidityError("public key is not an ECDSA P-256 key")
    if key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != public_key_der:
        raise KeyValidityError("public key is not in canonical SubjectPublicKeyInfo DER form")
    return key


def public_key_pem(public_key_der: bytes) -> bytes:
    """A P-256 SubjectPublicKeyInfo (DER) as PEM, for people and other tools."""
    return load_public_key(public_key_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_der_from_pem(pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo DER of a PEM public key, or raise :class:`KeyValidityError`."""
    _need_cryptography()
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyValidityError(f"not a PEM public key ({exc})") from None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@functools.cache
def _ecdsa_sha256() -> ec.ECDSA:
    # Built once: ingest verifies every message, and the object costs a few percent of a verify.
    return ec.ECDSA(hashes.SHA256())


def verify_signature(public_key_der: bytes, data: bytes, signature: bytes) -> None:
    """Verify a device signature over ``data``; raise :class:`SignatureError` naming the check."""
    parse_signature(signature)
    ecdsa_verify(public_key_der, data, signature)


def ecdsa_verify(public_key_der: bytes, data: bytes, signature: bytes) -> None:
    """The bare ECDSA P-256/SHA-256 check, without the encoding checks of
    :func:`parse_signature`: the verification policy (contract/policy.py) runs those as its own
    named check first, so ingest does not parse every signature twice."""
    _need_cryptography()
    key = load_public_key(public_key_der)
    try:
        key.verify(signature, data, _ecdsa_sha256())
    except InvalidSignature:
        raise SignatureError("signature does not verify with the device key") from None


def generate_private_key_pem() -> bytes:
    """A new P-256 private key as unencrypted PKCS#8 PEM (write it with mode 0600)."""
    if not HAVE_CRYPTOGRAPHY:
        import ecdsa

        pem: bytes = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).to_pem(format="pkcs8")
        return pem
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CryptographySigner:
    """Signs with OpenSSL through ``cryptography``."""

    def __init__(self, private_key_pem: bytes) -> None:
        _need_cryptography()
        try:
            key = serialization.load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyValidityError(f"private key is not an unencrypted PEM key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise KeyValidityError("private key is not an ECDSA P-256 key")
        self._key = key
        self._public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_key_der(self) -> bytes:
        return self._public_der

    def sign(self, data: bytes) -> bytes:
        return normalize_low_s(self._key.sign(data, ec.ECDSA(hashes.SHA256())))


class EcdsaSigner:
    """Pure-Python fallback signer (``ecdsa``), for gateways without a ``cryptography`` wheel."""

    def __init__(self, private_key_pem: bytes) -> None:
        import ecdsa  # imported here: only gateways that need the fallback pay for it

        try:
            key = ecdsa.SigningKey.from_pem(private_key_pem, hashfunc=hashlib.sha256)
        except Exception as exc:  # ecdsa raises assorted errors on bad PEM
            raise KeyValidityError(f"private key is not a PEM key ecdsa can read ({exc})") from None
        if key.curve != ecdsa.NIST256p:
            raise KeyValidityError("private key is not an ECDSA P-256 key")
        self._key = key
        self._public_der: bytes = key.get_verifying_key().to_der()

    @property
    def public_key_der(self) -> bytes:
        return self._public_der

    def sign(self, data: bytes) -> bytes:
        from ecdsa.util import sigencode_der_canonize

        # Explicit curve and hash: ecdsa's defaults are NIST192p and SHA-1.
        signature: bytes = self._key.sign_deterministic(
            data, hashfunc=hashlib.sha256, sigencode=sigencode_der_canonize
        )
        return signature


def load_signer(private_key_pem: bytes, *, backend: str = "auto") -> Signer:
    """The best signer available: ``cryptography`` if importable, else ``ecdsa``."""
    if backend not in ("auto", "cryptography", "ecdsa"):
        raise ValueError(f"unknown signing backend {backend!r}")
    if backend == "ecdsa" or (backend == "auto" and not HAVE_CRYPTOGRAPHY):
        return EcdsaSigner(private_key_pem)
    return CryptographySigner(private_key_pem)
