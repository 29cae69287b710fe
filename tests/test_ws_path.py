"""A relay's WebSocket path is configurable (``relay.ws_path``, ``--ws-path``) and published in its
link address; dialers open exactly that path, older addresses without one mean ``/v1/link``, and the
address grammar stays strict (docs/protocol.md §16)."""

from __future__ import annotations

import asyncio

import pytest

from zmesh.errors import ConfigError, ProtocolError, TransportError
from zmesh.netaddr import LINK_PATH, LinkAddress, check_link_path
from zmesh_relay import wslink
from zmesh_relay.config import load
from zmesh_relay.linkaddress import published_address
from zmesh_relay.socks5 import socks5_connect

from .test_native_mesh import _http_server, start_mesh
from .test_tls_links import _listed

PATH = "/static/v2.1/socket"


@pytest.mark.parametrize("text, path", [
    ("ws://relay.example.org:9001", LINK_PATH),  # an older descriptor's address: still valid
    ("ws://relay.example.org:9001/v1/link", LINK_PATH),
    (f"wss://relay.example.org{PATH}", PATH),
    ("ws://[2001:db8::1]:80/a_b~c-d", "/a_b~c-d"),
])
def test_a_link_address_carries_its_path_and_round_trips(text, path):
    address = LinkAddress.parse(text)
    assert address.path == path and address.url.endswith(path) and LinkAddress.parse(str(address)) == address


def test_a_pinned_address_keeps_its_path():
    address = LinkAddress.parse(f"wss://relay.example.org{PATH}").pinned(bytes(range(32)))
    assert str(address) == f"wss://relay.example.org:443{PATH}#sha256={bytes(range(32)).hex()}"
    assert LinkAddress.parse(str(address)) == address


@pytest.mark.parametrize("text", [
    "ws://relay.example.org/", "ws://relay.example.org//x", "ws://relay.example.org/x/", "ws://relay.example.org/..",
    "ws://relay.example.org/a/./b", "ws://relay.example.org/a/../b", "ws://relay.example.org/%2e%2e",
    "ws://relay.example.org/a?b", "ws://relay.example.org/a;b", "ws://relay.example.org/a b",
    "ws://relay.example.org/" + "a" * 65, "ws://relay.example.org" + "/a" * 9, "ws://relay.example.org/a\n",
    "ws://relay.example.org/é",
])
def test_a_path_is_strict(text):
    with pytest.raises(ProtocolError):
        LinkAddress.parse(text)


def test_the_relay_setting_is_checked_and_published():
    assert load(env={}, flags={"relay.ws_path": PATH})["relay.ws_path"] == PATH
    assert load(env={}, flags={})["relay.ws_path"] == LINK_PATH
    for bad in ("socket", "/a/../b", "/a?b", "/healthz", "/"):
        with pytest.raises(ConfigError, match="relay.ws_path"):
            load(env={}, flags={"relay.ws_path": bad})
    with pytest.raises(ConfigError):
        check_link_path("/a//b")
    assert published_address("127.0.0.1", 9001, advertise="", tls=None, path=PATH).url == \
        f"ws://127.0.0.1:9001{PATH}"
    # an advertised address without a path is published with the relay's path; one with a path keeps it
    assert published_address("0.0.0.0", 9001, advertise="ws://relay.example.org", tls=None, path=PATH).url == \
        f"ws://relay.example.org:80{PATH}"
    assert published_address("0.0.0.0", 9001, advertise="ws://relay.example.org/proxy/in", tls=None,
                             path=PATH).path == "/proxy/in"


def test_relays_on_their_own_path_publish_it_and_carry_circuits(tmp_path):
    files, files_port = _http_server()
    processes, url = start_mesh(tmp_path, files_port, relays=3, exits=1, env={"ZMESH_RELAY_WS_PATH": PATH})
    try:
        relays, client = processes[1:-1], processes[-1]
        addresses = [LinkAddress.parse(relay.address[0]) for relay in relays]
        assert all(a.path == PATH for a in addresses)
        listed = asyncio.run(_listed(url))
        assert all(listed[relay.address[1]] == {str(a)} for relay, a in zip(relays, addresses, strict=True))

        async def fetch() -> bytes:
            host, port = client.address[0].rsplit(":", 1)
            reader, writer = await socks5_connect(host, int(port), "127.0.0.1", files_port)
            writer.write(b"GET /small HTTP/1.0\r\n\r\n")
            body = await reader.read()
            writer.close()
            return body

        assert asyncio.run(fetch()).endswith(b"small page")  # three hops, each dialed on PATH

        async def dial(address: LinkAddress) -> None:
            link = await wslink.dial(address, allow_private=True, timeout=10)
            await link.close()

        asyncio.run(dial(addresses[0]))
        old = LinkAddress(addresses[0].scheme, addresses[0].host, addresses[0].port)  # /v1/link
        with pytest.raises(TransportError):  # the relay no longer answers on the old path
            asyncio.run(dial(old))
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
