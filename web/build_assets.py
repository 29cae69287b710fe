"""Prepare what the page loads, all served from this origin (the CDN is never contacted).

web/build/ gets: the zmesh core as a zip (unpacked into Pyodide's site-packages; the pure core,
``aio/`` and ``browser/``, without ``native/`` and ``testing/``, which a tab never imports), the msgpack
Pyodide wheel and pure-Python wheels from PyPI (kyber-py, dilithium-py; tlslite-ng with ecdsa and
six, and certifi's root list, for ``https://`` fetches), the shared test vectors, and manifest.json naming
them. Run by ``make setup``; idempotent. A wheel already in web/build/wheels is kept: to refresh
one (certifi's roots, say), delete it and run this again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "web" / "build"
NOT_IN_PAGE = {"native", "testing"}  # subpackages of zmesh the page leaves out
# Pure-Python wheels the page loads: ML-KEM and ML-DSA where WebCrypto lacks them (kyber-py,
# dilithium-py); TLS inside the tab (tlslite-ng and its dependencies ecdsa and six) and the roots it
# trusts (certifi: Mozilla's list).
PURE_WHEELS = ("kyber-py", "dilithium-py", "tlslite-ng", "ecdsa", "six", "certifi")
PYODIDE_PLATFORM = ["--platform", "pyemscripten_2026_0_wasm32", "--python-version", "3.14",
                    "--implementation", "cp", "--abi", "cp314"]


def main() -> None:
    wheels = BUILD / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("msgpack-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        *PYODIDE_PLATFORM, "msgpack", "-d", str(wheels)], check=True)
    for name in PURE_WHEELS:
        if not list(wheels.glob(f"{name.replace('-', '_')}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            name, "-d", str(wheels)], check=True)
    core = BUILD / "zmesh-core.zip"
    with zipfile.ZipFile(core, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((ROOT / "node-core" / "zmesh").rglob("*.py")):
            relative = path.relative_to(ROOT / "node-core")
            if relative.parts[1] not in NOT_IN_PAGE:
                archive.write(path, relative)
    vectors = BUILD / "vectors"
    shutil.rmtree(vectors, ignore_errors=True)
    shutil.copytree(ROOT / "tests" / "vectors", vectors, ignore=shutil.ignore_patterns("*.py", "*.md"))
    manifest = {"core": "build/zmesh-core.zip",
                "wheels": [f"build/wheels/{w.name}" for w in sorted(wheels.glob("*.whl"))],
                "vectors": sorted(p.name for p in vectors.glob("*.json"))}
    (BUILD / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
