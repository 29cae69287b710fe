"""The deployment files are checked where they can be without a container engine or PID 1:
the compose file's commands parse with the real CLI and keep every relay in a /16 of its own, and
the systemd unit passes ``systemd-analyze verify`` and its sandboxing scores as exposed little.
(``deploy/container-test``, run by CI, builds the image and runs the compose file for real.)"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from zmesh_relay import config as settings
from zmesh_relay.cli import parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _services() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]


def test_every_compose_command_parses_with_the_real_cli_and_loads_as_config() -> None:
    for name, service in _services().items():
        if name == "site":
            continue
        args = vars(parser().parse_args(service["command"]))
        args.pop("command"), args.pop("config"), args.pop("relays", None)
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        settings.load(None, flags=args, env=env)  # raises ConfigError on a bad value


def test_each_relay_listens_in_a_16_of_its_own() -> None:
    networks = []
    for service in _services().values():
        command = service["command"]
        if command and command[0] == "relay":
            host = command[command.index("--listen") + 1].rsplit(":", 1)[0]
            networks.append(ipaddress.ip_network(f"{host}/16", strict=False))
    assert len(networks) == 3 and len(set(networks)) == 3


def test_the_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is part of Debian's systemd package"
    unit = (DEPLOY / "systemd" / "zmesh-relay.service").read_text()
    # Only the install location differs: point ExecStart at this checkout's zmesh.
    zmesh = Path(sys.executable).with_name("zmesh")
    copy = tmp_path / "zmesh-relay.service"
    copy.write_text(re.sub(r"ExecStart=\S+", f"ExecStart={zmesh}", unit))
    verify = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", str(copy)],
                              capture_output=True, text=True)
    assert security.returncode == 0, security.stdout[-2000:]
    exposure = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout).group(1))
    assert exposure <= 2.0
