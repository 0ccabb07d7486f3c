"""transparency-dev/merkle's language-neutral proof vectors (Apache-2.0: vectors/merkle/LICENSE).

Every file is exercised: happy paths must verify, every negative must raise ProofError.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from meterchain.contract.errors import ProofError
from meterchain.contract.merkle import verify_consistency, verify_inclusion

from tests.support.paths import TESTS_ROOT

VECTORS = TESTS_ROOT / "vectors" / "merkle" / "testdata"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text())
    return vector


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_every_vector_file_is_collected() -> None:
    assert len(INCLUSION) == 98
    assert len(CONSISTENCY) == 98
    assert (VECTORS.parent / "LICENSE").is_file()


def _expect(vector: dict[str, Any], verify: Callable[..., None], *args: object) -> None:
    if vector["wantErr"]:
        with pytest.raises(ProofError) as raised:
            verify(*args)
        assert raised.value.check == "proof"
        assert "step" in raised.value.context
    else:
        verify(*args)  # raises ProofError if the happy path does not verify


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    vector = _load(path)
    proof = [_b64(h) for h in vector["proof"] or []]
    leaf, root = _b64(vector["leafHash"]), _b64(vector["root"])
    _expect(vector, verify_inclusion, vector["leafIdx"], vector["treeSize"], leaf, proof, root)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    vector = _load(path)
    proof = [_b64(h) for h in vector["proof"] or []]
    root1, root2 = _b64(vector["root1"]), _b64(vector["root2"])
    _expect(vector, verify_consistency, vector["size1"], vector["size2"], root1, root2, proof)
