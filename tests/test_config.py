"""Configuration layering: zmesh.toml < ZMESH_* environment < flags, errors name the key; every
setting is validated, documented in zmesh.example.toml and checkable with ``zmesh config --check``."""

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from zmesh.aio.rtc import ChannelOptions
from zmesh.errors import ConfigError
from zmesh.identity import PeerId
from zmesh_relay import config
from zmesh_relay.cli import parser
from zmesh_relay.config import SETTINGS, describe, load, rtc_options

PEER, OTHER = PeerId(bytes(range(32))).text, PeerId(bytes(32)).text


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "zmesh.toml"
    path.write_text('[core]\nhops = 4\n[relay]\nlisten = "127.0.0.1:9001"\nexit = true\n')
    cfg = load(path, env={"ZMESH_CORE_HOPS": "5"}, flags={"relay.listen": "127.0.0.1:9002"})
    assert (cfg["core.hops"], cfg["relay.listen"], cfg["relay.exit"]) == (5, "127.0.0.1:9002", True)
    assert load(env={})["core.hops"] == 3


@pytest.mark.parametrize("source, key", [
    ({"env": {"ZMESH_CORE_HOPS": "9"}}, "core.hops"),
    ({"env": {"ZMESH_RELAY_EXIT": "maybe"}}, "relay.exit"),
    ({"flags": {"client.socks": "nowhere"}}, "client.socks"),
    ({"flags": {"signaling.url": "ftp://x"}}, "signaling.url"),
    ({"flags": {"relay.country": "Germany"}}, "relay.country"),
    ({"flags": {"path.exclude_countries": ["DE", "Germany"]}}, "path.exclude_countries"),
    ({"env": {"ZMESH_PATH_EXCLUDE_COUNTRIES": "de,1x"}}, "path.exclude_countries"),
    ({"flags": {"relay.family": ["not-a-peer-id"]}}, "relay.family"),
    ({"flags": {"relay.family": [PEER, PEER]}}, "relay.family"),
    ({"flags": {"relay.family": [PEER] * 33}}, "relay.family"),
])
def test_bad_values_name_the_key_and_source(source, key):
    with pytest.raises(ConfigError, match=key):
        load(env=source.get("env", {}), flags=source.get("flags"))


def test_bad_files_are_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[core\nhops=")
    with pytest.raises(ConfigError, match="TOML"):
        load(bad, env={})
    bad.write_text("[core]\ncolour = 1\n")
    with pytest.raises(ConfigError, match="core.colour"):
        load(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml", env={})


def test_webrtc_settings_from_the_file(tmp_path):
    path = tmp_path / "zmesh.toml"
    path.write_text('[transport]\nkind = "webrtc"\nwebrtc_timeout = 4\n'
                    'ice_servers = ["stun:stun.example.org:3478", '
                    '{urls = ["turn:turn.example.org:3478"], username = "u", credential = "secret"}]\n'
                    'channels = [{label = "ctl", negotiated_id = 0},'
                    ' {label = "fec", ordered = false, max_retransmits = 0}]\n')
    options = rtc_options(load(path, env={}))
    assert options.timeout == 4.0
    assert [s.urls for s in options.ice_servers] == [("stun:stun.example.org:3478",), ("turn:turn.example.org:3478",)]
    assert options.ice_servers[1].credential == "secret" and "secret" not in repr(options.ice_servers)
    assert [(c.label, c.ordered, c.max_retransmits, c.negotiated_id) for c in options.channels] == [
        ("ctl", True, None, 0), ("fec", False, 0, None)]
    assert rtc_options(load(env={})).channels == (ChannelOptions("data"),)


@pytest.mark.parametrize("toml, key", [
    ('[transport]\nice_servers = ["http://not-ice"]\n', "transport.ice_servers"),
    ('[transport]\nice_servers = [{urls = "turn:x", username = "u"}]\n', "transport.ice_servers"),
    ('[transport]\nchannels = [{label = "lossy", ordered = false}]\n', "transport.channels"),
    ('[transport]\nchannels = [{label = "a", max_retransmits = 1, max_packet_lifetime = 5}]\n', "transport.channels"),
    ('[transport]\nchannels = [{label = "a", colour = "red"}]\n', "transport.channels"),
    ('[transport]\nwebrtc_timeout = 0\n', "transport.webrtc_timeout"),
    ('[transport]\nkind = "pigeon"\n', "transport.kind"),
])
def test_bad_webrtc_settings_name_the_key(tmp_path, toml, key):
    path = tmp_path / "zmesh.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(path, env={})


@pytest.mark.parametrize("name", ["relay.max_links", "relay.max_links_per_address", "relay.max_circuits",
                                  "relay.handshake_rate"])
def test_relay_bounds_must_be_at_least_one(name):
    variable = "ZMESH_" + name.upper().replace(".", "_")
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load(env={variable: "0"})
    defaults = load(env={})
    assert (defaults["relay.max_links"], defaults["relay.max_links_per_address"], defaults["relay.max_circuits"],
            defaults["relay.handshake_rate"]) == (1000, 32, 16384, 100.0)


def test_family_and_excluded_countries_from_flags_env_and_cli():
    cfg = load(env={"ZMESH_PATH_EXCLUDE_COUNTRIES": "de, nl"}, flags={"relay.family": [PEER]})
    assert cfg["path.exclude_countries"] == ("DE", "NL") and cfg["relay.family"] == (PeerId.from_text(PEER),)
    args = vars(parser().parse_args(["relay", "--family", PEER, "--family", OTHER]))
    assert args["relay.family"] == [PEER, OTHER]
    args = vars(parser().parse_args(["client", "--exclude-country", "us", "--exclude-country", "FR"]))
    assert load(env={}, flags={"path.exclude_countries": args["path.exclude_countries"]})["path.exclude_countries"] \
        == ("US", "FR")
    assert load(env={})["relay.family"] == () and load(env={})["path.exclude_countries"] == ()


@pytest.mark.parametrize("address, allowed", [("127.0.0.1:0", True), ("127.9.0.1:9051", True), ("[::1]:0", True),
                                              ("localhost:0", True), ("0.0.0.0:0", False), ("10.99.0.1:1", False),
                                              ("[::]:0", False), ("example.org:9051", False)])
def test_the_control_port_is_loopback_only_unless_allowed(address, allowed):
    cfg = config.load(env={}, flags={"client.control": address})
    if allowed:
        assert config.control_address(cfg) is not None
    else:
        with pytest.raises(ConfigError, match="not a loopback address.*control-allow-remote"):
            config.control_address(cfg)
        remote = config.load(env={}, flags={"client.control": address, "client.control_allow_remote": True})
        assert config.control_address(remote) == config.split_host_port(address)


def test_circuit_settings_are_validated_by_the_policy():
    assert config.circuit_policy(config.load(env={})).max_dirtiness == 600 == 10 * 60
    for flags in ({"client.max_circuit_dirtiness": "0"}, {"client.circuit_pool": "-1"}, {"client.control": "nope"}):
        with pytest.raises(ConfigError, match=next(iter(flags))):
            config.load(env={}, flags=flags)


ROOT = Path(__file__).resolve().parents[1]
NUMERIC = [name for name, setting in SETTINGS.items() if setting.kind in (int, float)]


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_setting_refuses_a_negative_value_naming_it(name):
    variable = "ZMESH_" + name.upper().replace(".", "_")
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load(env={variable: "-1"})


def test_every_cli_option_has_help():
    def options(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    yield from options(command)
            elif action.dest != "help":
                yield action

    missing = [action.option_strings for action in options(parser()) if not action.help]
    assert missing == []


def test_the_example_file_sets_every_setting_and_checks(tmp_path):
    example = ROOT / "zmesh.example.toml"
    document = tomllib.loads(example.read_text())
    assert {f"{section}.{key}" for section, table in document.items() for key in table} == set(SETTINGS)
    checked = _zmesh("config", "--check", str(example))
    assert checked.returncode == 0, checked.stderr
    assert [line.split(" = ")[0] for line in checked.stdout.splitlines()] == list(SETTINGS)


def test_config_check_refuses_a_negative_timeout_naming_it(tmp_path):
    bad = tmp_path / "zmesh.toml"
    bad.write_text("[core]\nbuild_timeout = -5\n")
    checked = _zmesh("config", "--check", str(bad))
    assert checked.returncode == 2 and "core.build_timeout" in checked.stderr and checked.stdout == ""


def test_config_check_masks_credentials(tmp_path):
    path = tmp_path / "zmesh.toml"
    path.write_text('[transport]\nice_servers = [{urls = ["turn:t.example:3478"], username = "u", '
                    'credential = "hunter2"}]\n')
    lines = describe(load(path, env={}))
    assert not any("hunter2" in line for line in lines)
    assert any('"credential": "(set)"' in line for line in lines)


def _zmesh(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    return subprocess.run([sys.executable, "-m", "zmesh_relay.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_exit_policy_rules_are_checked_at_load_and_split_on_semicolons_in_the_environment():
    loaded = load(env={"ZMESH_EXIT_POLICY": "accept *:25; reject *:80,443"})
    assert loaded["exit.policy"] == ["accept *:25", "reject *:80,443"]
    assert load(flags={"exit.policy": ["reject 10.0.0.0/8:*"]})["exit.policy"] == ["reject 10.0.0.0/8:*"]
    for bad in ({"ZMESH_EXIT_POLICY": "accept *:25,reject *:80"}, {"ZMESH_EXIT_UPSTREAM": "http://proxy/path"},
                {"ZMESH_CLIENT_EXIT_KIND": "cloudflare"}, {"ZMESH_CLIENT_EXIT_COUNTRY": "Sweden"}):
        (variable,) = bad
        with pytest.raises(ConfigError, match=variable.removeprefix("ZMESH_").lower().replace("_", ".", 1)):
            load(env=bad)
    assert load(env={"ZMESH_EXIT_UPSTREAM": "http://127.0.0.1:3128/"})["exit.upstream"] == "http://127.0.0.1:3128"
