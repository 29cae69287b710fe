"""A native onion service's key on disk (``zmesh_relay.keys.load_or_create_service_key``): made
once, 0600 in a 0700 folder, the same address after a restart, and refused (never replaced) when
others can read it or it does not decode."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from zmesh.encoding import pack_canonical
from zmesh.errors import ConfigError
from zmesh.onion.address import encode_address
from zmesh_relay.keys import SERVICE_KEY_FILE, load_or_create_identity, load_or_create_service_key


def run(coro):
    return asyncio.run(coro)


def test_created_private_and_kept_across_restarts(provider, tmp_path):
    folder = tmp_path / "service"
    seed = run(load_or_create_service_key(provider, folder))
    path = folder / SERVICE_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert run(load_or_create_service_key(provider, folder)) == seed
    address = encode_address(run(provider.ed25519_public(seed)))
    assert address.endswith(".mesh")
    identity = run(load_or_create_identity(provider, folder))  # a separate key from the node's identity
    assert identity.peer_id.key != run(provider.ed25519_public(seed))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_others_can_read_is_refused(provider, tmp_path, mode):
    run(load_or_create_service_key(provider, tmp_path))
    path = tmp_path / SERVICE_KEY_FILE
    before = path.read_bytes()
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        run(load_or_create_service_key(provider, tmp_path))
    assert path.read_bytes() == before


@pytest.mark.parametrize("data", [b"", b"\x00" * 32, pack_canonical({"v": 2, "seed": bytes(32)}),
                                  pack_canonical({"v": 1, "seed": bytes(31)}), pack_canonical([1, 2])])
def test_a_file_that_is_not_a_service_key_is_refused_not_replaced(provider, tmp_path, data):
    path = tmp_path / SERVICE_KEY_FILE
    path.write_bytes(data)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="service key"):
        run(load_or_create_service_key(provider, tmp_path))
    assert path.read_bytes() == data
