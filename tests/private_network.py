"""The tests run WebRTC (aiortc relays, Chromium tabs), which gathers ICE candidates on every
interface it sees; they must see only the private namespace that ``tests/netns-run`` makes.
Their meshes live on loopback, so they declare a private test network for zmesh as well."""

from __future__ import annotations

import os
import socket

import pytest

NAMESPACE_INTERFACES = {"lo", "zmesh0", "zmesh1"}


def require_private_network() -> None:
    """Stop the run before any test if this process can see a real network interface."""
    seen = {name for _, name in socket.if_nameindex()}
    if seen != NAMESPACE_INTERFACES:
        pytest.exit(f"the tests must run in the private network namespace (they see {sorted(seen)}): "
                    "use `make test`, or `tests/netns-run .venv/bin/python -m pytest ...`", returncode=2)


PRIVATE_NETWORK_ENV = "ZMESH_NETWORK_ALLOW_PRIVATE_ADDRESSES"


def declare_private_test_network() -> None:
    """Let every zmesh config loaded in this run, and every subprocess it starts, list and dial
    relays on loopback (``network.allow_private_addresses``); tests of the default set it off."""
    os.environ[PRIVATE_NETWORK_ENV] = "true"


def relay_listen(number: int) -> str:
    """The listen address of relay ``number`` (1, 2, ...) in a test mesh: a loopback /16 of its own
    (``127.N.0.1``), so the path rule "no two hops in one /16" holds on one host as on the Internet."""
    if not 1 <= number <= 254:
        raise ValueError(f"relay number must be 1..254, got {number}")
    return f"127.{number}.0.1:0"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a server that must be told its port before it starts (a
    relay advertising it, tinyproxy, redis-server). Tests run in their own network namespace
    (tests/netns-run), so nothing else takes it in between."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
