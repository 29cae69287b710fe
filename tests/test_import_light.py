"""The core must import with only the standard library and msgpack (it runs in Pyodide)."""

import subprocess
import sys
from pathlib import Path

import zmesh

CORE_ROOT = str(Path(zmesh.__file__).resolve().parents[1])

PROBE = r"""
import importlib, pkgutil, sys
sys.path.insert(0, sys.argv[1])  # the core under test, which need not be the installed one
allowed = set(sys.stdlib_module_names) | {"msgpack", "zmesh"}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in allowed:
            raise ImportError(f"zmesh core imported a non-stdlib module: {name}")
        return None

sys.meta_path.insert(0, Block())
import zmesh
# adapters for one runtime: native needs `cryptography`, browser ones need Pyodide's `js`
adapters = ("zmesh.native.", "zmesh.browser.")
names = [m.name for m in pkgutil.walk_packages(zmesh.__path__, "zmesh.") if not m.name.startswith(adapters)]
for name in names:
    importlib.import_module(name)
print(" ".join(names))
"""


def test_core_imports_with_stdlib_and_msgpack_only():
    # -I: a fresh interpreter that sees only the installed packages, not this test run's imports.
    result = subprocess.run([sys.executable, "-I", "-c", PROBE, CORE_ROOT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert len(imported) >= 15  # every core module was imported
    assert "zmesh.netaddr" in imported  # the address rules exits, dialers, tabs and the directory share
