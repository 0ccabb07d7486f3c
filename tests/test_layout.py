"""The distribution's layout: every package folder ships in the wheel, imports point one way."""

from __future__ import annotations

import ast
import tomllib

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
FOLDERS = {
    "meterchain.contract": "contract",
    "meterchain.agent": "agent",
    "meterchain.backend": "backend",
    "meterchain.bridge": "firmware-bridge",
    "meterchain.cli": "cli",
    "meterchain.mqtt": "mqtt",
    "meterchain.witness": "witness",
}


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in FOLDERS.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


def _imports(folder: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_import_graph_flows_one_way() -> None:
    # contract, mqtt <- agent, backend; bridge <- agent; nothing imports the cli.
    rules = {
        "contract": ("meterchain.agent", "meterchain.backend", "meterchain.bridge", "meterchain.cli"),
        "firmware-bridge": ("meterchain.agent", "meterchain.backend", "meterchain.contract", "meterchain.cli"),
        "agent": ("meterchain.backend", "meterchain.cli"),
        "backend": ("meterchain.agent", "meterchain.bridge", "meterchain.cli"),
        "mqtt": ("meterchain.agent", "meterchain.backend", "meterchain.bridge", "meterchain.cli"),
    }
    for folder, forbidden in rules.items():
        bad = {m for m in _imports(folder) if m.startswith(forbidden)}
        assert not bad, f"{folder}/ imports {sorted(bad)}"


#: What verifying an ECDSA signature looks like in Python: the libraries' modules, the contract's
#: low-level functions, and the verify calls (cryptography's with an ``ECDSA`` argument or on a
#: key from ``load_public_key``, ecdsa's with ``sigdecode=``/``hashfunc=``).
_ECDSA_MODULES = ("cryptography.hazmat.primitives.asymmetric.ec", "cryptography.exceptions", "ecdsa")
_ECDSA_FUNCTIONS = {"verify_signature", "ecdsa_verify", "InvalidSignature"}


def _ecdsa_verification(source: str) -> set[str]:
    """The ways ``source`` verifies an ECDSA signature itself (empty when it leaves it to the
    contract's verification policy)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {f"import {a.name}" for a in node.names if a.name.startswith(_ECDSA_MODULES)}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name for a in node.names}
            if node.module.startswith(_ECDSA_MODULES) or (
                node.module == "cryptography.hazmat.primitives.asymmetric" and "ec" in names
            ):
                found.add(f"from {node.module} import {', '.join(sorted(names))}")
            found |= {f"imports {n}" for n in names & _ECDSA_FUNCTIONS}
        elif isinstance(node, ast.Attribute) and node.attr in _ECDSA_FUNCTIONS:
            found.add(f"uses .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "verify":
            ecdsa_arg = any("ECDSA" in ast.unparse(a) for a in node.args)
            ecdsa_kw = any(k.arg in ("sigdecode", "hashfunc") for k in node.keywords)
            loaded_key = "load_public_key" in ast.unparse(node.func)  # the contract's key loader
            if ecdsa_arg or ecdsa_kw or loaded_key:
                found.add(f"calls {ast.unparse(node.func)}(...)")
    return found


def test_the_ecdsa_check_recognises_each_way_to_verify() -> None:
    cases = [
        "from cryptography.hazmat.primitives.asymmetric import ec",
        "import ecdsa",
        "from cryptography.exceptions import InvalidSignature",
        "from meterchain.contract.signing import verify_signature",
        "from meterchain.contract.signing import ecdsa_verify",
        "from meterchain.contract import signing\nsigning.verify_signature(k, data, sig)",
        "key.verify(sig, data, ECDSA(SHA256()))",
        "load_public_key(der).verify(sig, data, _ALGORITHM)",
        "key.verify(sig, data, _ECDSA)",
        "vk.verify(sig, data, hashfunc=sha256, sigdecode=sigdecode_der)",
    ]
    for source in cases:
        assert _ecdsa_verification(source), source
    policy = "from meterchain.contract.policy import SIGNED_BY_DEVICE\nSIGNED_BY_DEVICE.verify(e)"
    assert not _ecdsa_verification(policy)


def test_only_the_contract_verifies_ecdsa_signatures() -> None:
    # One verification policy (contract/policy.py): ingest, audit, settlement and the cli compose
    # its checks; nothing outside the contract verifies a device signature on its own.
    for folder in (f for f in FOLDERS.values() if f != "contract"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found = _ecdsa_verification(path.read_text())
            assert not found, f"{path.relative_to(ROOT)} verifies ECDSA itself: {sorted(found)}"


def test_in_the_contract_only_the_policy_calls_the_ecdsa_primitive() -> None:
    # signing.py holds the primitive; policy.py is its one caller for readings and leaves.
    # ocmf.py checks an OCMF record's own signature (verify_ocmf), for readers of OCMF alone.
    allowed = {"ecdsa_verify": {"signing.py", "policy.py"},
               "verify_signature": {"signing.py", "ocmf.py"}}
    for path in sorted((ROOT / "contract").rglob("*.py")):
        names = {n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute)
                 else a.name for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, (ast.Name, ast.Attribute, ast.ImportFrom))
                 for a in (n.names if isinstance(n, ast.ImportFrom) else [n])}
        for function, files in allowed.items():
            assert function not in names or path.name in files, f"{path.name} uses {function}"


def test_no_gpl_package_in_product_code() -> None:
    gpl = ("gurux", "pymerkle", "smllib")
    for folder in FOLDERS.values():
        bad = {m for m in _imports(folder) if m.split(".")[0].startswith(gpl)}
        assert not bad, f"{folder}/ imports GPL package(s) {sorted(bad)}"


def test_only_the_mqtt_shell_imports_an_mqtt_client_library() -> None:
    # One MQTT shell (docs/mqtt.md): the agent, the backend and the cli connect through it.
    libraries = ("paho", "aiomqtt", "amqtt", "gmqtt")
    for folder in (f for f in FOLDERS.values() if f != "mqtt"):
        bad = {m for m in _imports(folder) if m.split(".")[0] in libraries}
        assert not bad, f"{folder}/ imports MQTT client libraries {sorted(bad)}: use meterchain.mqtt"
    assert {"aiomqtt", "amqtt.broker"} <= _imports("mqtt")  # the check sees what it looks for
