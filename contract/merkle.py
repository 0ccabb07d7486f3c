"""RFC 9162 Merkle tree hashing, proof generation (reference) and proof verification.

Pure code over SHA-256. Hashing follows RFC 9162 §2.1.1: a leaf hashes as SHA-256(0x00 ‖ data), an
interior node as SHA-256(0x01 ‖ left ‖ right), and a tree of n leaves splits at the largest power of
two strictly below n. Verification follows the semantics of transparency-dev/merkle's
``proof/verify.go`` and its JSON test vectors: sizes, index bounds, proof length and every hash's
length are checked before anything is hashed, and a failure raises :class:`ProofError` naming the
step that failed.

Generation here is the O(n) reference over all leaf hashes; the log's storage side builds the same
proofs from O(log n) stored nodes (``meterchain.backend.log.tree``) using
:func:`inclusion_proof_ranges` and :func:`consistency_proof_ranges`, which say which leaf range
each proof hash covers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from meterchain.contract.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the empty tree (RFC 9162 §2.1.1: MTH({}) = SHA-256())."""

MAX_TREE_SIZE = 2**64 - 1
"""Tree sizes and leaf indices are uint64 in RFC 9162's structures; larger values are malformed."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Hash of one log entry: SHA-256(0x00 ‖ data), apart from node hashes (RFC 9162 §2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 ‖ left ‖ right) (RFC 9162 §2.1.1).

    Callers pass 32-byte hashes; the verifiers below check lengths before they get here.
    """
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_from_peaks(peaks: Sequence[bytes]) -> bytes:
    """Root of a tree given its perfect subtree hashes, largest (leftmost) first.

    A tree of n leaves is the perfect subtrees of its set bits, left to right; RFC 9162 §2.1.1's
    split at the largest power of two makes its root the right-to-left fold of those peaks.
    """
    if not peaks:
        return EMPTY_ROOT
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = node_hash(peak, root)
    return root


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over already-hashed leaves (RFC 9162 §2.1.1): O(n) hashes, O(log n) memory."""
    peaks: list[bytes] = []
    for count, value in enumerate(leaf_hashes):
        _require_hash(value, "leaf hash", step="root", index=count)
        # Merge one peak per trailing one bit of the number of leaves already folded in.
        while count & 1:
            value = node_hash(peaks.pop(), value)
            count >>= 1
        peaks.append(value)
    return root_from_peaks(peaks)


def inclusion_proof_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges [start, end) whose subtree hashes form PATH(index, D[size]) (RFC 9162 §2.1.3.1).

    Listed in proof order (from the leaf's sibling up to the root's other child).
    """
    _require_size(size, "size", step="generate")
    _require_size(index, "index", step="generate")
    if index >= size:
        raise _proof_error("leaf index is beyond the tree", step="generate", index=index, size=size)
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        split = start + _largest_power_of_two_below(end - start)
        if index < split:
            ranges.append((split, end))
            end = split
        else:
            ranges.append((start, split))
            start = split
    ranges.reverse()
    return ranges


def consistency_proof_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges [start, end) whose subtree hashes form PROOF(old_size, D[new_size]).

    RFC 9162 §2.1.4.1's SUBPROOF, in proof order. Requires 0 < old_size <= new_size; equal sizes
    give an empty proof.
    """
    _require_size(old_size, "old_size", step="generate")
    _require_size(new_size, "new_size", step="generate")
    if old_size == 0 or old_size > new_size:
        raise _proof_error(
            "a consistency proof needs 0 < old_size <= new_size",
            step="generate",
            old_size=old_size,
            new_size=new_size,
        )
    ranges: list[tuple[int, int]] = []
    start, end, old_end = 0, new_size, old_size
    old_root_is_known = True  # SUBPROOF's b: the verifier already holds this subtree's hash.
    while old_end != end:
        split = start + _largest_power_of_two_below(end - start)
        if old_end <= split:
            ranges.append((split, end))
            end = split
        else:
            ranges.append((start, split))
            start = split
            old_root_is_known = False
    if not old_root_is_known:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Reference inclusion proof of leaf ``index`` from all leaves, O(n) (RFC 9162 §2.1.3.1)."""
    ranges = inclusion_proof_ranges(index, len(leaf_hashes))
    return [root_from_leaf_hashes(leaf_hashes[start:end]) for start, end in ranges]


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Reference consistency proof from ``old_size`` to ``len(leaf_hashes)`` (RFC 9162 §2.1.4.1)."""
    ranges = consistency_proof_ranges(old_size, len(leaf_hashes))
    return [root_from_leaf_hashes(leaf_hashes[start:end]) for start, end in ranges]


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2); raises ProofError if malformed.

    Checks 0 <= index < size, the leaf hash's and every proof hash's length, and the exact proof
    length before hashing anything.
    """
    _require_size(size, "size", step="bounds")
    _require_size(index, "index", step="bounds")
    if index >= size:
        raise _proof_error("leaf index is beyond the tree", step="bounds", index=index, size=size)
    _require_hash(leaf_hash, "leaf hash", step="leaf", index=index, size=size)
    inner, border = _inclusion_shape(index, size)
    _require_proof(proof, inner + border, index=index, size=size)

    result = _chain_inner(leaf_hash, proof[:inner], index)
    return _chain_border(result, proof[inner:])


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree (size, root) (RFC 9162 §2.1.3.2).

    Returns None; raises ProofError (check="proof", with the failed step) otherwise.
    """
    _require_hash(root, "root", step="root", index=index, size=size)
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if calculated != root:
        raise _proof_error(
            "inclusion proof leads to a different root",
            step="root",
            index=index,
            size=size,
            calculated=calculated.hex(),
            expected=root.hex(),
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (new_size, new_root) extends (old_size, old_root) (RFC 9162 §2.1.4.2).

    As in transparency-dev/merkle's JSON vectors: old_size 0 is always an error, even 0 -> 0
    (stricter than its verify.go; a first contact has no proof to check and is handled before
    calling this); equal sizes need an empty proof and byte-equal roots (nothing is hashed, so
    root lengths are not checked then); otherwise the proof length must be exact.
    Returns None; raises ProofError (check="proof", with the failed step) otherwise.
    """
    _require_size(old_size, "old_size", step="sizes")
    _require_size(new_size, "new_size", step="sizes")
    sizes = {"old_size": old_size, "new_size": new_size}
    if new_size < old_size:
        raise _proof_error("new tree is smaller than the old one", step="sizes", **sizes)
    if old_size == 0:
        raise _proof_error(
            "a consistency proof from the empty tree is meaningless", step="sizes", **sizes
        )
    if _is_string_like(proof):
        raise _proof_error("proof is not a sequence of hashes", step="proof-length", **sizes)
    if old_size == new_size:
        if len(proof) != 0:
            raise _proof_error(
                "equal sizes need an empty proof", step="proof-length", got=len(proof), **sizes
            )
        if old_root != new_root:
            raise _proof_error("equal sizes but different roots", step="roots", **sizes)
        return
    _require_hash(old_root, "old root", step="roots", **sizes)
    _require_hash(new_root, "new root", step="roots", **sizes)

    # The proof is, after an optional seed, the tail of the inclusion proof of leaf old_size-1
    # in the new tree, from the level of the old tree's last perfect subtree upwards.
    inner, border = _inclusion_shape(old_size - 1, new_size)
    shift = _trailing_zeros(old_size)
    inner -= shift
    seed_from_proof = old_size != 1 << shift  # else the seed is the old root itself
    _require_proof(proof, int(seed_from_proof) + inner + border, **sizes)
    seed = proof[0] if seed_from_proof else old_root
    path = proof[1:] if seed_from_proof else proof

    mask = (old_size - 1) >> shift
    old_hash = new_hash = seed
    for level, sibling in enumerate(path[:inner]):
        if (mask >> level) & 1:
            old_hash = node_hash(sibling, old_hash)
            new_hash = node_hash(sibling, new_hash)
        else:
            new_hash = node_hash(new_hash, sibling)  # right of the old tree: only in the new one
    old_hash = _chain_border(old_hash, path[inner:])
    new_hash = _chain_border(new_hash, path[inner:])
    if old_hash != old_root:
        raise _proof_error("proof does not lead to the old root", step="old-root", **sizes)
    if new_hash != new_root:
        raise _proof_error("proof does not lead to the new root", step="new-root", **sizes)


def _proof_error(message: str, **context: object) -> ProofError:
    # ProofError's own keyword `check` cannot be typed against an open **context: name it here.
    return ProofError(message, check=ProofError.check, **context)


def _inclusion_shape(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof hashes below and above where the paths to index and size-1 diverge."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, siblings: Sequence[bytes], index: int) -> bytes:
    # node_hash inlined: one SHA-256 per level is the whole work of a proof check
    for sibling in siblings:
        seed = _sha256(_NODE_PREFIX + sibling + seed if index & 1 else _NODE_PREFIX + seed + sibling).digest()
        index >>= 1
    return seed


def _chain_border(seed: bytes, left_siblings: Sequence[bytes]) -> bytes:
    """Above the divergence point every sibling is a left subtree (RFC 9162 §2.1.3.2)."""
    for sibling in left_siblings:
        seed = _sha256(_NODE_PREFIX + sibling + seed).digest()
    return seed


def _largest_power_of_two_below(n: int) -> int:
    """k with k < n <= 2k, for n >= 2 (RFC 9162 §2.1.1's split point)."""
    return 1 << ((n - 1).bit_length() - 1)


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


def _is_string_like(value: object) -> bool:
    return isinstance(value, (str, bytes, bytearray, memoryview)) or not isinstance(value, Sequence)


def _require_size(value: object, name: str, **context: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREE_SIZE:
        raise _proof_error(f"{name} must be an integer in [0, 2^64)", **context, **{name: value})


def _require_hash(value: object, what: str, **context: object) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        got = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise _proof_error(f"{what} must be {HASH_SIZE} bytes", got=got, **context)


def _require_proof(proof: Sequence[bytes], expected: int, **context: object) -> None:
    """Exact proof length first (no missing or trailing hashes), then every hash's length."""
    if type(proof) in (list, tuple) and len(proof) == expected:
        for value in proof:  # the common case, without building each check's error context
            if type(value) is not bytes or len(value) != HASH_SIZE:
                break
        else:
            return
    if _is_string_like(proof):
        raise _proof_error("proof is not a sequence of hashes", step="proof-length", **context)
    if len(proof) != expected:
        raise _proof_error(
            "wrong number of proof hashes",
            step="proof-length",
            got=len(proof),
            expected=expected,
            **context,
        )
    for position, value in enumerate(proof):
        _require_hash(value, "proof hash", step="proof-hash", position=position, **context)
