"""Device enrolment, key rotation and revocation: each is a device leaf in the log.

The registry table (``device_keys``) is an index over those leaves; the log is the record. A
change is validated against the device's current leaves and its highest committed sequence in the
same transaction that appends it: a new key may only take effect *after* every reading already
committed, so history never changes meaning and ``audit`` re-verifies every stored reading.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

from meterchain.backend.store import KeyRow, KeyStore
from meterchain.contract.errors import KeyValidityError, MeterchainError
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT
from meterchain.contract.signing import load_public_key, public_key_der_from_pem


class RegistryError(MeterchainError):
    """An enrolment, rotation or revocation was refused."""

    check = "registry"


def parse_public_key(data: bytes | str) -> bytes:
    """A P-256 public key from SubjectPublicKeyInfo DER, PEM, or base64 of the DER."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if raw[:1] == b"\x30":  # DER: never strip, a key's last byte may be whitespace
        der = raw
    elif raw.strip().startswith(b"-----BEGIN"):
        der = public_key_der_from_pem(raw.strip())
    else:
        try:
            der = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyValidityError("public key is neither PEM, DER nor base64 DER") from None
    load_public_key(der)
    return der


class KeyRegistry:
    """An in-memory view of every device leaf, refreshed incrementally from the store."""

    def __init__(self) -> None:
        self.version = 0  # the newest device leaf id seen
        self._leaves: dict[str, tuple[DeviceLeaf, ...]] = {}

    async def refresh(self, store: KeyStore) -> bool:
        """Load device leaves newer than the last seen; True if anything changed."""
        rows = await store.key_rows(after_leaf_id=self.version)
        if not rows:
            return False
        # Copy on write: worker threads may be reading the previous mapping right now.
        updated = dict(self._leaves)
        for row in rows:
            updated[row.device] = (*updated.get(row.device, ()), _leaf(row))
            self.version = row.leaf_id
        self._leaves = updated
        return True

    def snapshot(self) -> Mapping[str, Sequence[DeviceLeaf]]:
        """An immutable view for one batch of checks: device -> its leaves in log order."""
        return self._leaves

    def enrolled(self, device: str) -> bool:
        return device in self._leaves

    def leaves(self, device: str) -> tuple[DeviceLeaf, ...]:
        return self._leaves.get(device, ())

    def devices(self) -> list[str]:
        return sorted(self._leaves)


def _leaf(row: KeyRow) -> DeviceLeaf:
    return DeviceLeaf(row.device, DeviceEvent(row.event), row.public_key, row.valid_from, row.time)


def _check_device(device: str) -> None:
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        raise RegistryError(
            "device id must be 1-64 of A-Z a-z 0-9 . _ - (it names an MQTT topic)", device=device
        )


async def enrol(store: KeyStore, device: str, public_key: bytes, now: int) -> DeviceLeaf:
    """Enrol a new device with its key, valid from sequence 1."""
    _check_device(device)
    der = parse_public_key(public_key)

    def build(rows: list[KeyRow], highest: int) -> DeviceLeaf:
        if rows:
            raise RegistryError(
                f"device {device} is already enrolled; rotate its key instead", device=device
            )
        return DeviceLeaf(device, DeviceEvent.ENROL, der, 1, now)

    return await store.append_device_leaf(device, build)


async def rotate(
    store: KeyStore, device: str, public_key: bytes, now: int, valid_from: int | None = None
) -> DeviceLeaf:
    """Give an enrolled device a new key from ``valid_from`` on (default: after its last reading)."""
    _check_device(device)
    der = parse_public_key(public_key)

    def build(rows: list[KeyRow], highest: int) -> DeviceLeaf:
        current = _current(device, rows)
        start = _valid_from(device, valid_from, current, highest)
        if current.public_key == der:
            raise RegistryError(f"device {device} already uses this key", device=device)
        return DeviceLeaf(device, DeviceEvent.ROTATE, der, start, now)

    return await store.append_device_leaf(device, build)


async def revoke(store: KeyStore, device: str, now: int, valid_from: int | None = None) -> DeviceLeaf:
    """Revoke a device's key: no reading from ``valid_from`` on (default: after its last) is valid."""
    _check_device(device)

    def build(rows: list[KeyRow], highest: int) -> DeviceLeaf:
        current = _current(device, rows)
        start = _valid_from(device, valid_from, current, highest)
        return DeviceLeaf(device, DeviceEvent.REVOKE, current.public_key, start, now)

    return await store.append_device_leaf(device, build)


def _current(device: str, rows: list[KeyRow]) -> KeyRow:
    if not rows:
        raise RegistryError(f"device {device} is not enrolled; enrol it first", device=device)
    latest = max(rows, key=lambda r: (r.valid_from, r.leaf_id))
    if latest.event == DeviceEvent.REVOKE.value:
        raise RegistryError(
            f"device {device} is revoked from sequence {latest.valid_from}; "
            "enrol it under a new device id",
            device=device,
        )
    return latest


def _valid_from(device: str, requested: int | None, current: KeyRow, highest: int) -> int:
    start = requested if requested is not None else max(highest, current.valid_from) + 1
    if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= MAX_SAFE_INT:
        raise RegistryError("valid-from must be an integer in [1, 2^53-1]", device=device)
    if start <= current.valid_from:
        raise RegistryError(
            f"valid-from {start} must be greater than the current key's valid-from "
            f"{current.valid_from}",
            device=device,
        )
    if start <= highest:
        raise RegistryError(
            f"valid-from {start} must be after the highest committed sequence {highest}: "
            "a key change never rewrites what is already stored",
            device=device,
            highest=highest,
        )
    return start
