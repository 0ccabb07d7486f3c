"""The worked example of docs/format.md, built from fixed example keys.

Everything here is deterministic (RFC 6979 ECDSA through the ``ecdsa`` signer, Ed25519), so the
example doubles as a test vector for independent verifiers: ``scripts/gen_format_example.py``
writes it into docs/format.md and a test checks the file still matches. The keys are derived from
public strings: they are examples, never to be used for anything else.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import cbor2
from meterchain.contract import merkle, signing
from meterchain.contract.bundle import Bundle
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf
from meterchain.contract.message import sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.policy import LoggedLeaf
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register

EXAMPLE_ORIGIN = "example.meterchain.org/log"


def example_device_key_pem() -> bytes:
    import ecdsa

    scalar = int.from_bytes(hashlib.sha256(b"meterchain example device key").digest(), "big")
    key = ecdsa.SigningKey.from_secret_exponent(scalar % signing.P256_ORDER, curve=ecdsa.NIST256p)
    pem: bytes = key.to_pem(format="pkcs8")
    return pem


def example_log_key() -> NoteSigner:
    return NoteSigner(EXAMPLE_ORIGIN, hashlib.sha256(b"meterchain example log key").digest())


@dataclass(frozen=True)
class WorkedExample:
    device_key_pem: bytes
    public_key_der: bytes
    reading: Reading
    reading_bytes: bytes
    signature: bytes
    message: bytes
    device_leaf: bytes
    leaf_hashes: tuple[bytes, bytes]
    root: bytes
    log_public_key: str
    checkpoint: str
    bundle: str


def build() -> WorkedExample:
    device = signing.EcdsaSigner(example_device_key_pem())
    log_key = example_log_key()
    reading = Reading(
        device="gw-0001",
        key_id=signing.key_id(device.public_key_der),
        seq=1,
        meter="SDM630-21000042",
        start=1_767_225_600,  # 2026-01-01T00:00:00Z
        end=1_767_226_500,  # 2026-01-01T00:15:00Z
        registers={IMPORT_OBIS: Register(1_234_567, "Wh"), EXPORT_OBIS: Register(89_012, "Wh")},
    )
    signed = sign_reading(reading, device)
    message = signed.to_cbor()
    device_leaf = DeviceLeaf("gw-0001", DeviceEvent.ENROL, device.public_key_der, 1, 1_767_225_000).to_cbor()
    hashes = (merkle.leaf_hash(device_leaf), merkle.leaf_hash(message))
    root = merkle.node_hash(*hashes)
    checkpoint = Checkpoint(EXAMPLE_ORIGIN, 2, root).sign(log_key)
    bundle = Bundle(
        LoggedLeaf(message, 1, (hashes[0],)), (LoggedLeaf(device_leaf, 0, (hashes[1],)),), checkpoint
    ).to_text()
    return WorkedExample(
        example_device_key_pem(),
        device.public_key_der,
        reading,
        signed.reading_bytes,
        signed.signature,
        message,
        device_leaf,
        hashes,
        root,
        str(log_key.verifier),
        checkpoint,
        bundle,
    )


def _hex(data: bytes, width: int = 64) -> str:
    h = data.hex()
    return "\n".join(h[i : i + width] for i in range(0, len(h), width))


def _diag(data: bytes) -> str:
    """A readable rendering of a CBOR map (not normative; the hex is)."""
    obj = cbor2.loads(data)

    def render(v: object, indent: str = "  ") -> str:
        if isinstance(v, dict):
            inner = ",\n".join(f'{indent}"{k}": {render(x, indent + "  ")}' for k, x in v.items())
            return "{\n" + inner + "\n" + indent[:-2] + "}"
        if isinstance(v, list):
            return "[" + ", ".join(render(x, indent) for x in v) + "]"
        if isinstance(v, bytes):
            return f"h'{v.hex()}'"
        if isinstance(v, str):
            return f'"{v}"'
        return str(v)

    return render(obj)


def render_markdown() -> str:
    """The generated section of docs/format.md."""
    ex = build()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return "\n".join(
        [
            "Example keys (derived from public strings; never use them for anything else):",
            "",
            "- device private key: P-256 scalar = SHA-256(\"meterchain example device key\") mod n",
            f"- device public key (SPKI DER, hex): `{ex.public_key_der.hex()}`",
            f"- key id = SHA-256(SPKI): `{ex.reading.key_id.hex()}`",
            "- log key: Ed25519 seed = SHA-256(\"meterchain example log key\"), name "
            f"`{EXAMPLE_ORIGIN}`",
            f"- log public key: `{ex.log_public_key}`",
            "",
            f"**Reading** ({len(ex.reading_bytes)} bytes), in diagnostic notation:",
            "",
            "```",
            _diag(ex.reading_bytes),
            "```",
            "",
            "and its bytes (hex):",
            "",
            "```",
            _hex(ex.reading_bytes),
            "```",
            "",
            f"**Signature** (DER, low-S; RFC 6979 deterministic, so reproducible), {len(ex.signature)} bytes:",
            "",
            "```",
            _hex(ex.signature),
            "```",
            "",
            f"**Message** `[reading, signature]` ({len(ex.message)} bytes; also the reading leaf's data):",
            "",
            "```",
            _hex(ex.message),
            "```",
            "",
            f"**Device leaf** (enrolment, valid from sequence 1), {len(ex.device_leaf)} bytes:",
            "",
            "```",
            _diag(ex.device_leaf),
            "```",
            "",
            "```",
            _hex(ex.device_leaf),
            "```",
            "",
            "**Two-leaf tree**: leaf 0 is the device leaf, leaf 1 the reading.",
            "",
            f"- leaf hash 0 = SHA-256(00 ‖ device leaf) = `{ex.leaf_hashes[0].hex()}`",
            f"- leaf hash 1 = SHA-256(00 ‖ message) = `{ex.leaf_hashes[1].hex()}`",
            f"- root = SHA-256(01 ‖ leaf hash 0 ‖ leaf hash 1) = `{ex.root.hex()}` (base64 `{b64(ex.root)}`)",
            "",
            "**Checkpoint** (signed note; Ed25519 is deterministic, so this is byte-exact):",
            "",
            "```",
            ex.checkpoint.rstrip("\n"),
            "```",
            "",
            "**Proof bundle** for the reading (file `gw-0001-1.tlog-proof`):",
            "",
            "```",
            ex.bundle.rstrip("\n"),
            "```",
        ]
    )
