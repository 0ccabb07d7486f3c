"""contract.merkle: golden roots and proofs (RFC 9162 / transparency-dev), and properties."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.contract.errors import ProofError
from meterchain.contract.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

STANDARD_LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f")
]
STANDARD_HASHES = [leaf_hash(data) for data in STANDARD_LEAVES]
# Roots of the first 1..8 standard leaves (transparency-dev/merkle proof/verify_test.go).
STANDARD_ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def naive_root(hashes: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 read literally: split at the largest power of two strictly below n."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + naive_root(hashes[:k]) + naive_root(hashes[k:])).digest()


def leaves_of(size: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]


def test_hashing_is_domain_separated() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"") == bytes.fromhex(
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    left, right = STANDARD_HASHES[0], STANDARD_HASHES[1]
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert len(leaf_hash(b"x")) == HASH_SIZE


def test_root_of_the_standard_leaves() -> None:
    assert root_from_leaf_hashes(STANDARD_HASHES).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )
    for size, expected in enumerate(STANDARD_ROOTS, start=1):
        assert root_from_leaf_hashes(STANDARD_HASHES[:size]) == expected


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


@pytest.mark.parametrize(
    ("index", "size", "expected"),
    [
        (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
        (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
        (0, 1, []),
    ],
)
def test_known_inclusion_proofs(index: int, size: int, expected: list[str]) -> None:
    proof = inclusion_proof(index, STANDARD_HASHES[:size])
    assert [h.hex() for h in proof] == expected
    verify_inclusion(index, size, STANDARD_HASHES[index], proof, STANDARD_ROOTS[size - 1])


@pytest.mark.parametrize(
    ("old_size", "new_size", "expected"),
    [
        (1, 1, []),
        (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
        (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
        (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    ],
)
def test_known_consistency_proofs(old_size: int, new_size: int, expected: list[str]) -> None:
    proof = consistency_proof(old_size, STANDARD_HASHES[:new_size])
    assert [h.hex() for h in proof] == expected
    verify_consistency(
        old_size, new_size, STANDARD_ROOTS[old_size - 1], STANDARD_ROOTS[new_size - 1], proof
    )


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=8), max_size=70))
def test_root_matches_naive_recursive_definition(data: list[bytes]) -> None:
    hashes = [leaf_hash(item) for item in data]
    assert root_from_leaf_hashes(hashes) == naive_root(hashes)


@st.composite
def index_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(min_value=1, max_value=300))
    return draw(st.integers(min_value=0, max_value=size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new_size = draw(st.integers(min_value=1, max_value=300))
    return draw(st.integers(min_value=1, max_value=new_size)), new_size


def flip_bit(proof: list[bytes], position: int, bit: int) -> list[bytes]:
    mutated = list(proof)
    changed = bytearray(mutated[position])
    changed[bit // 8] ^= 1 << (bit % 8)
    mutated[position] = bytes(changed)
    return mutated


@settings(max_examples=60)
@given(index_in_tree(), st.data())
def test_inclusion_proofs_verify_and_mutations_fail(
    case: tuple[int, int], data: st.DataObject
) -> None:
    index, size = case
    hashes = leaves_of(size)
    root = naive_root(hashes)
    proof = inclusion_proof(index, hashes)
    verify_inclusion(index, size, hashes[index], proof, root)
    assert root_from_inclusion_proof(index, size, hashes[index], proof) == root

    bad_cases: list[tuple[int, int, list[bytes]]] = [
        (index, size, [*proof, root]),  # trailing hash
        (index, size, [root, *proof]),  # preceding hash
        (index, size * 2, proof),  # wrong size
    ]
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1), label="position")
        bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
        bad_cases.append((index, size, flip_bit(proof, position, bit)))
        bad_cases.append((index, size, proof[:-1]))  # missing hash
    if size > 1:
        wrong = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="wrong")
        bad_cases.append((wrong, size, proof))
    if index < size // 2:
        # A wrong size is caught by the proof's shape only when the shape changes (as for
        # size * 2 and size // 2); e.g. leaf 0's proof is the same for sizes 3 and 4.
        bad_cases.append((index, size // 2, proof))
    for bad_index, bad_size, bad_proof in bad_cases:
        with pytest.raises(ProofError):
            verify_inclusion(bad_index, bad_size, hashes[index], bad_proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf_hash(b"other"), proof, root)


@settings(max_examples=60)
@given(two_sizes(), st.data())
def test_consistency_proofs_verify_and_mutations_fail(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old_size, new_size = case
    hashes = leaves_of(new_size)
    old_root, new_root = naive_root(hashes[:old_size]), naive_root(hashes)
    proof = consistency_proof(old_size, hashes)
    verify_consistency(old_size, new_size, old_root, new_root, proof)
    if old_size == new_size:
        assert proof == []
        with pytest.raises(ProofError):
            verify_consistency(old_size, new_size, old_root, new_root, [old_root])
        return

    bad_cases: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (old_size, new_size, old_root, new_root, [*proof, new_root]),  # trailing hash
        (old_size, new_size, old_root, new_root, proof[:-1]),  # missing hash
        (old_size, new_size, new_root, old_root, proof),  # swapped roots
        (old_size, new_size * 2, old_root, new_root, proof),  # wrong new size
        (old_size, new_size, old_root, new_root, []),
    ]
    position = data.draw(st.integers(0, len(proof) - 1), label="position")
    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
    bad_cases.append((old_size, new_size, old_root, new_root, flip_bit(proof, position, bit)))
    wrong_old = data.draw(
        st.integers(1, new_size).filter(lambda s: s != old_size), label="wrong_old"
    )
    bad_cases.append((wrong_old, new_size, old_root, new_root, proof))
    for bad_old, bad_new, bad_old_root, bad_new_root, bad_proof in bad_cases:
        with pytest.raises(ProofError):
            verify_consistency(bad_old, bad_new, bad_old_root, bad_new_root, bad_proof)


@pytest.mark.parametrize(
    ("index", "size", "leaf", "proof", "root", "step"),
    [
        (-1, 4, b"\x00" * 32, [], b"\x00" * 32, "bounds"),
        (True, 4, b"\x00" * 32, [], b"\x00" * 32, "bounds"),
        (0, 2**64, b"\x00" * 32, [], b"\x00" * 32, "bounds"),
        ("0", 4, b"\x00" * 32, [], b"\x00" * 32, "bounds"),
        (0, 2, "not bytes", [b"\x00" * 32], b"\x00" * 32, "leaf"),
        (0, 2, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, "proof-length"),
        (0, 2, b"\x00" * 32, [b"\x00" * 31], b"\x00" * 32, "proof-hash"),
        (0, 2, b"\x00" * 32, [None], b"\x00" * 32, "proof-hash"),
        (0, 2, b"\x00" * 32, [b"\x00" * 32], None, "root"),
    ],
)
def test_malformed_inclusion_input_raises_typed_error(
    index: object, size: object, leaf: object, proof: object, root: object, step: str
) -> None:
    with pytest.raises(ProofError) as raised:
        verify_inclusion(index, size, leaf, proof, root)  # type: ignore[arg-type]
    assert raised.value.context["step"] == step
    assert "proof" in raised.value.diagnostics()


@pytest.mark.parametrize(
    ("old_size", "new_size", "old_root", "new_root", "proof", "step"),
    [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], "sizes"),
        (0, 5, EMPTY_ROOT, EMPTY_ROOT, [], "sizes"),
        (3, 2, EMPTY_ROOT, EMPTY_ROOT, [], "sizes"),
        (-1, 2, EMPTY_ROOT, EMPTY_ROOT, [], "sizes"),
        (2, 2, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "proof-length"),
        (2, 2, EMPTY_ROOT, b"\x01" * 32, [], "roots"),
        (2, 3, b"short", EMPTY_ROOT, [EMPTY_ROOT], "roots"),
        (3, 4, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT] * 9, "proof-length"),
        (3, 4, EMPTY_ROOT, EMPTY_ROOT, "abc", "proof-length"),
    ],
)
def test_malformed_consistency_input_raises_typed_error(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: object, step: str
) -> None:
    with pytest.raises(ProofError) as raised:
        verify_consistency(old_size, new_size, old_root, new_root, proof)  # type: ignore[arg-type]
    assert raised.value.context["step"] == step


def test_generation_rejects_impossible_requests() -> None:
    hashes = leaves_of(4)
    with pytest.raises(ProofError):
        inclusion_proof(4, hashes)
    with pytest.raises(ProofError):
        consistency_proof(0, hashes)
    with pytest.raises(ProofError):
        consistency_proof(5, hashes)
    with pytest.raises(ProofError):
        root_from_leaf_hashes([b"\x00" * 31])
