"""The folder rule: a module's folder says what it may import, so the pure core runs unchanged in Pyodide.

The pure core (``zmesh`` itself, ``crypto/``, ``fec/``) imports only the standard library — never
asyncio — msgpack and other pure modules; ``aio/`` adds asyncio and the pure core; ``browser/``
adds Pyodide's ``js`` and ``pyodide`` and the page's pure-Python wheels on top of ``aio/``;
``native/`` adds ``cryptography`` to the pure core; ``testing/`` (harnesses) may use the pure core
and ``aio/``, and only tests and benchmarks import it. Modules are found by walking the folders,
so a new one is checked at once.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import zmesh

CORE = Path(zmesh.__file__).resolve().parent
ROOT = CORE.parents[1]
SUBPACKAGE_LAYERS = {"aio", "browser", "native", "testing"}  # every other folder is part of the pure core
STDLIB = set(sys.stdlib_module_names)
PAGE_WHEELS = {"kyber_py", "dilithium_py", "tlslite", "certifi"}  # pure-Python wheels the page loads
MAY_IMPORT = {  # layer -> (zmesh layers, outside top-level packages)
    "pure": ({"pure"}, (STDLIB - {"asyncio"}) | {"msgpack"}),
    "aio": ({"pure", "aio"}, STDLIB | {"msgpack"}),
    "browser": ({"pure", "aio", "browser"}, STDLIB | {"msgpack", "js", "pyodide", "zmesh_js_crypto", *PAGE_WHEELS}),
    "native": ({"pure", "native"}, STDLIB | {"msgpack", "cryptography"}),
    "testing": ({"pure", "aio", "testing"}, STDLIB | {"msgpack"}),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(package: Path) -> dict[str, Path]:
    return {module_name(path, package.parent): path for path in sorted(package.rglob("*.py"))}


CORE_MODULES = modules_under(CORE)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGE_LAYERS else "pure"


def imports_of(module: str, path: Path) -> set[str]:
    """Every module ``path`` imports anywhere in it (functions and TYPE_CHECKING blocks too), with
    relative imports resolved and ``from package import module`` counted as that module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in CORE_MODULES)
    return found


# The one exception, named: the package's front door ``zmesh.connect`` hands off to the native
# client inside the function (never at import time), so ``import zmesh`` stays pure in Pyodide.
FRONT_DOOR = {"zmesh": {"zmesh_relay.mesh"}}


def forbidden_imports(module: str, path: Path) -> list[str]:
    zmesh_layers, outside = MAY_IMPORT[layer(module)]
    bad = []
    for name in sorted(imports_of(module, path) - FRONT_DOOR.get(module, set())):
        top = name.split(".")[0]
        if top == "zmesh":
            allowed = layer(name) in zmesh_layers
        else:
            allowed = top in outside
        if not allowed:
            bad.append(name)
    return bad


@pytest.mark.parametrize("module", sorted(CORE_MODULES))
def test_each_module_imports_only_what_its_folder_allows(module):
    assert forbidden_imports(module, CORE_MODULES[module]) == [], f"{module} is in the {layer(module)} layer"


def test_the_folder_rule_sees_every_layer_and_would_catch_a_break(tmp_path):
    layers = {layer(m) for m in CORE_MODULES}
    assert layers == set(MAY_IMPORT)
    assert sum(layer(m) == "pure" for m in CORE_MODULES) >= 20
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def later():\n    import asyncio\n    from .aio import driver\n"
                      "    from .testing.wire import FakeClock\n")
    assert forbidden_imports("zmesh.sneaky", sneaky) == ["asyncio", "zmesh.aio", "zmesh.aio.driver",
                                                         "zmesh.testing.wire"]


@pytest.mark.parametrize("package", ["relay/zmesh_relay", "signaling/zmesh_signal"])
def test_deployments_never_import_the_test_harnesses(package):
    modules = modules_under(ROOT / package)
    assert modules
    for module, path in modules.items():
        assert not [name for name in imports_of(module, path) if name.startswith("zmesh.testing")], module


PROBE = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])  # the core under test, which need not be the installed one
pure, glue = json.loads(sys.argv[2])
allowed = (set(sys.stdlib_module_names) - {"asyncio"}) | {"msgpack", "zmesh"}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in allowed:
            raise ImportError(f"zmesh core imported a module it may not: {name}")
        return None

sys.meta_path.insert(0, Block())
import zmesh
light = sorted(name for name in sys.modules if name.startswith("zmesh"))
for name in pure:
    importlib.import_module(name)
no_asyncio = "asyncio" not in sys.modules
allowed.add("asyncio")
for name in glue:
    importlib.import_module(name)
print(json.dumps({"light": light, "no_asyncio": no_asyncio}))
"""


def test_the_core_imports_with_everything_else_blocked():
    """In a fresh interpreter where only the standard library and msgpack can be imported, and
    asyncio only after the pure core: the pure core, then ``aio/`` and ``testing/``, all import."""
    pure = [m for m in CORE_MODULES if layer(m) == "pure"]
    glue = [m for m in CORE_MODULES if layer(m) in ("aio", "testing")]
    # -I: a fresh interpreter that sees only the installed packages, not this test run's imports.
    result = subprocess.run([sys.executable, "-I", "-c", PROBE, str(CORE.parent), json.dumps([pure, glue])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["light"] == ["zmesh"]  # `import zmesh` loads nothing of the package beyond itself
    assert seen["no_asyncio"]  # not even through the standard library
    assert "zmesh.netaddr" in pure  # the address rules exits, dialers, tabs and the directory share
