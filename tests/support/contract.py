"""A small, real log for contract tests: two enrolled devices and a few signed readings."""

from __future__ import annotations

from dataclasses import dataclass

from meterchain.contract import merkle, signing
from meterchain.contract.bundle import Bundle, LoggedLeaf
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf, parse_leaf
from meterchain.contract.message import sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register


@dataclass
class SmallLog:
    """Two devices' enrolments and a few signed readings, sealed under one checkpoint."""

    device_signer: signing.Signer
    other_signer: signing.Signer
    log_key: NoteSigner
    leaves: list[bytes]
    checkpoint: str

    def bundle(self, index: int, device: str = "gw-1") -> Bundle:
        hashes = [merkle.leaf_hash(leaf) for leaf in self.leaves]
        keys = []
        for i, data in enumerate(self.leaves):
            leaf = parse_leaf(data)
            if isinstance(leaf, DeviceLeaf) and leaf.device == device:
                keys.append(LoggedLeaf(data, i, tuple(merkle.inclusion_proof(i, hashes))))
        return Bundle(
            LoggedLeaf(self.leaves[index], index, tuple(merkle.inclusion_proof(index, hashes))),
            tuple(keys),
            self.checkpoint,
        )


def make_reading(signer: signing.Signer, seq: int, device: str = "gw-1", **overrides: object) -> Reading:
    fields: dict[str, object] = {
        "device": device,
        "key_id": signing.key_id(signer.public_key_der),
        "seq": seq,
        "meter": "SDM630-0001",
        "start": 1_700_000_100 + 900 * (seq - 1) - 100,
        "end": 1_700_000_100 + 900 * seq - 100,
        "registers": {IMPORT_OBIS: Register(1_000 * seq, "Wh"), EXPORT_OBIS: Register(7 * seq, "Wh")},
    }
    fields.update(overrides)
    return Reading(**fields)  # type: ignore[arg-type]


def build_small_log() -> SmallLog:
    device = signing.CryptographySigner(signing.generate_private_key_pem())
    other = signing.CryptographySigner(signing.generate_private_key_pem())
    log_key = NoteSigner.generate("log.meterchain.test")
    leaves = [
        DeviceLeaf("gw-1", DeviceEvent.ENROL, device.public_key_der, 1, 1_700_000_000).to_cbor(),
        DeviceLeaf("gw-2", DeviceEvent.ENROL, other.public_key_der, 1, 1_700_000_000).to_cbor(),
    ]
    leaves += [sign_reading(make_reading(device, seq), device).to_cbor() for seq in (1, 2, 3)]
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(leaf) for leaf in leaves])
    checkpoint = Checkpoint("log.meterchain.test", len(leaves), root).sign(log_key)
    return SmallLog(device, other, log_key, leaves, checkpoint)
