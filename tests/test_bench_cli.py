"""Issue 16 item 5: every benchmark accepts ``--json`` (one JSON object of its figures on its last
line, written by the one helper in ``bench/figures.py``). Only the argument parsers run here:
benchmarks are never timed in the test suite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "figures.py")


def test_every_bench_script_offers_json():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("node-core", "relay", "signaling", "."))}
    runs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT) for p in SCRIPTS}
    missing = {}
    for name, process in runs.items():
        out, _ = process.communicate(timeout=60)
        if process.returncode != 0 or "--json" not in out:
            missing[name] = out[-300:]
    assert len(SCRIPTS) >= 10 and not missing, missing


@pytest.mark.parametrize("figures", [{"a_MBps": 1.5, "nested": {"x": [1, 2]}}, {}])
def test_print_json_is_one_object_on_the_last_line(capsys, figures):
    sys.path.insert(0, str(ROOT))
    import argparse

    from bench.figures import add_json_flag, print_json

    parser = argparse.ArgumentParser()
    add_json_flag(parser)
    print("| a table |")
    print_json(parser.parse_args(["--json"]), figures)
    print_json(parser.parse_args([]), {"never": "printed"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| a table |" and json.loads(lines[-1]) == figures and len(lines) == 2
