"""An import-linter contract type for names, not modules (pyproject.toml [tool.importlinter]).

import-linter sees which module imports which; a contract like "only the verification policy
verifies device signatures" is about two functions of ``meterchain.contract.signing``, a module
many others import for its signer and key id. ``imported_names`` reads each importer's source
and breaks when a module outside ``allowed_importers`` takes one of ``names`` from ``module``
(``from module import name``, or ``module.name`` / ``alias.name``).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import grimp
from importlinter import Contract, ContractCheck, fields, output


def _source_file(module: str, root: Path) -> Path | None:
    """The file of ``module`` through pyproject's package-dir (meterchain.bridge is firmware-bridge/)."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        if module != package and not module.startswith(package + "."):
            continue
        base = root / folder / Path(*module[len(package) :].split(".")[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _uses(tree: ast.AST, module: str, names: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            found += [(node.lineno, alias.name) for alias in node.names if alias.name in names]
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.append((node.lineno, node.attr))
    return found


class ImportedNamesContract(Contract):
    """Only ``allowed_importers`` (and their submodules) may use ``names`` of ``module``."""

    type_name = "imported_names"

    module = fields.StringField()
    names = fields.ListField(subfield=fields.StringField())
    allowed_importers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        module, names = str(self.module), {str(n) for n in self.names}
        allowed = tuple(str(a) for a in self.allowed_importers)
        root = Path.cwd()
        illegal = []
        for importer in sorted(graph.find_modules_that_directly_import(module)):
            if any(importer == a or importer.startswith(a + ".") for a in allowed):
                continue
            path = _source_file(importer, root)
            if path is None:
                continue
            for line, name in _uses(ast.parse(path.read_text(), str(path)), module, names):
                illegal.append((importer, name, line))
        return ContractCheck(kept=not illegal, metadata={"illegal": illegal})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, name, line in check.metadata["illegal"]:
            output.print_error(f"- {importer} uses {self.module}.{name} (l.{line})", bold=False)
        output.new_line()
