"""Configuration layering: zmesh.toml < ZMESH_* environment < flags, errors name the key."""

import pytest

from zmesh.errors import ConfigError
from zmesh_relay.config import load


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
