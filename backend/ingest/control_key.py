"""The backend's control key: it signs every ack (contract/control.py, docs/backend.md).

A file of its own beside the log key (mode 0600, a C2SP note key ``PRIVATE+KEY+…``), never the
log key: ingest workers need it, and the log key stays with the sealer. The process that runs the
sealer creates it on first start and announces it to the log as a control-key leaf (``enrol``);
``meterchain backend control-key rotate`` makes a new one (``rotate`` leaf) and keeps the old one
as ``<file>.previous``: acks are then signed by both, and name the new key, so a gateway that
verified an ack adopts the new key (docs/agent.md, "Signed acks"). ``retire`` deletes the
previous key once every gateway has seen an ack since the rotation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from meterchain.contract.control import ControlKeyLeaf, control_key_name
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteSigner

log = logging.getLogger(__name__)


class ControlKeyError(MeterchainError):
    check = "control-key"


class _LeafLog(Protocol):
    async def append_control_leaf(self, data: bytes, received_at: int) -> int: ...


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def read_control_keys(path: str | Path) -> tuple[NoteSigner, ...]:
    """The current control key and, during a rotation, the previous one (signing order)."""
    path = Path(path)
    keys = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            keys.append(NoteSigner.parse(candidate.read_text().strip()))
        except (OSError, MeterchainError) as exc:
            raise ControlKeyError(f"cannot read control key {candidate}: {exc}",
                                  path=str(candidate)) from None
    if not keys or not path.exists():
        raise ControlKeyError(
            f"control key {path} does not exist; the sealer creates it on its first start "
            "(point control_key at its file on every ingest and api node)", path=str(path))
    return tuple(keys)


def public_control_key(path: str | Path) -> str:
    """The current control key's verifier text (what provisioning hands to gateways), or ""."""
    try:
        return str(read_control_keys(path)[0].verifier)
    except ControlKeyError:
        return ""


def _write_new(path: Path, signer: NoteSigner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(signer) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


async def load_or_create_control_key(path: str | Path, origin: str, store: _LeafLog, *,
                                     create: bool, wait: float = 0.0) -> tuple[NoteSigner, ...]:
    """The control keys in use; with ``create`` (the sealer), a missing key is made and its
    ``enrol`` leaf appended to the log. Without, a missing key is waited for up to ``wait``
    seconds (an ingest worker started before the sealer), then refused."""
    path = Path(path)
    if not create:
        deadline = time.monotonic() + wait
        if not path.exists() and wait > 0:
            log.info("waiting up to %.0f s for the sealer's control key %s", wait, path)
        while not path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return read_control_keys(path)
    if path.exists():
        return read_control_keys(path)
    signer = NoteSigner.generate(control_key_name(origin))
    leaf = ControlKeyLeaf(str(signer.verifier), "enrol", int(time.time()))
    _write_new(path, signer)
    await store.append_control_leaf(leaf.to_cbor(), leaf.time)
    log.info("created control key %s (public: %s)", path, signer.verifier)
    return (signer,)


async def rotate_control_key(path: str | Path, origin: str, store: _LeafLog) -> NoteSigner:
    """A new control key; the current one becomes the previous (signing beside it until
    :func:`retire_previous`). Restart the ingest workers to sign with both."""
    path = Path(path)
    current = read_control_keys(path)[0]
    if previous_path(path).exists():
        raise ControlKeyError(
            f"a rotation is still in progress ({previous_path(path)} exists); retire the "
            "previous key first (meterchain backend control-key retire)", path=str(path))
    signer = NoteSigner.generate(control_key_name(origin))
    leaf = ControlKeyLeaf(str(signer.verifier), "rotate", int(time.time()))
    os.link(path, previous_path(path))  # the old key stays, under its new name
    _write_new(path, signer)
    await store.append_control_leaf(leaf.to_cbor(), leaf.time)
    log.info("rotated control key %s: %s (previous %s)", path, signer.verifier, current.verifier)
    return signer


def retire_previous(path: str | Path) -> bool:
    """Forget the previous control key (after every gateway got an ack naming the new one)."""
    previous = previous_path(Path(path))
    if not previous.exists():
        return False
    previous.unlink()
    return True
