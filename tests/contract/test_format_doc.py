"""docs/format.md's worked example is generated from the code and must stay true."""

from __future__ import annotations

import re
import runpy

from meterchain.contract import merkle
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.note import NoteVerifier
from meterchain.contract.worked_example import build

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_format_doc_example_is_current() -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "gen_format_example.py"))
    text = (ROOT / "docs" / "format.md").read_text()
    assert script["updated"](text) == text, "run: python scripts/gen_format_example.py"


def test_worked_example_verifies_from_the_documented_values() -> None:
    """An independent recomputation from the hex in the doc reproduces the root and verifies."""
    text = (ROOT / "docs" / "format.md").read_text()
    ex = build()
    assert ex.reading_bytes.hex()[:64] in text.replace("\n", "")
    assert merkle.node_hash(merkle.leaf_hash(ex.device_leaf), merkle.leaf_hash(ex.message)) == ex.root
    key = re.search(r"log public key: `([^`]+)`", text)
    assert key is not None
    result = verify_bundle(ex.bundle, NoteVerifier.parse(key.group(1)))
    assert result.reading.reading == ex.reading
