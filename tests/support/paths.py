"""Where things are, for tests and benchmarks wherever their file sits in the tree."""

from __future__ import annotations

from pathlib import Path

TESTS_ROOT = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_ROOT.parent
DOCS = REPO_ROOT / "docs"
TEST_DATA = TESTS_ROOT / "data"
VECTORS = TESTS_ROOT / "vectors"
