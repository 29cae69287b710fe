"""Link addresses and the dial rules of the pure core (``zmesh.netaddr``), the descriptor's strict
``ws`` parsing, the tab's page-host rule, and the dialer's memory of failed peers (fake clock)."""

import asyncio
import ipaddress
import time

import pytest

from zmesh.aio.transport import TransportDialer
from zmesh.descriptor import DOMAIN, Capabilities, sign_descriptor, verify_descriptor
from zmesh.encoding import pack_canonical
from zmesh.errors import ConfigError, ProtocolError, TransportError
from zmesh.identity import Identity
from zmesh.netaddr import (
    LinkAddress,
    check_resolved,
    descriptor_refusal,
    page_allows_private,
    refusal,
)

SSRF = "ws://127.0.0.1:{port}/admin/reboot?confirm=yes"
ip = ipaddress.ip_address


async def forged_descriptor(provider, identity, addresses: dict[str, list[str]]) -> bytes:
    """A well-signed descriptor whose addresses ``sign_descriptor`` would refuse to write: what a
    hostile publisher sends."""
    now = int(time.time())
    body = pack_canonical({
        "v": 1, "id": identity.peer_id.key, "published": now, "expires": now + 3600, "addresses": addresses,
        "caps": {"relay": True, "exit": False, "country": "", "bandwidth": 0}, "exit_ports": [],
        "onion": {"x25519": identity.onion_keys.x25519, "mlkem768": identity.onion_keys.mlkem768}})
    return pack_canonical([body, await provider.ed25519_sign(identity.signing_key, DOMAIN + body)])


@pytest.mark.parametrize("text, parsed", [
    ("ws://127.0.0.1:9001/v1/link", ("ws", "127.0.0.1", 9001)),
    ("ws://127.0.0.1:9001", ("ws", "127.0.0.1", 9001)),
    ("wss://Relay.Example.org/v1/link", ("wss", "relay.example.org", 443)),
    ("ws://relay.example.org.:80", ("ws", "relay.example.org.", 80)),
    ("ws://[2001:DB8::1]:65535/v1/link", ("ws", "2001:db8::1", 65535)),
    ("ws://localhost:1", ("ws", "localhost", 1)),
])
def test_link_addresses_parse_into_scheme_host_and_port(text, parsed):
    address = LinkAddress.parse(text)
    assert (address.scheme, address.host, address.port) == parsed
    assert address.url.endswith("/v1/link") and LinkAddress.parse(address.url) == address


@pytest.mark.parametrize("text", [
    SSRF.format(port=8080),
    "ws://127.0.0.1:8080/v1/link/", "ws://127.0.0.1:8080/v1/link?x=1",
    "ws://127.0.0.1:8080/v1/link#f", "ws://user:pw@relay.example.org/v1/link", "ws://relay.example.org@127.0.0.1/",
    "http://relay.example.org/v1/link", "WS://relay.example.org", "ws://relay.example.org:0",
    "ws://relay.example.org:65536", "ws://relay.example.org:+80", "ws://relay.example.org:",
    "ws://127.1:80", "ws://0x7f000001:80", "ws://127.0.0.1.:80", "ws://2130706433:80", "ws://[::1%lo]:80",
    "ws://[127.0.0.1]:80", "ws://-relay.example.org", "ws://relay..example.org", "ws:// relay.example.org",
    "ws://relay.example.org\n", "ws://relay.example.org/v1/link\n", "ws://" + "a" * 64 + ".org", "ws://",
])
def test_anything_but_host_and_port_on_the_link_path_is_refused(text):
    with pytest.raises(ProtocolError):
        LinkAddress.parse(text)


def test_the_ssrf_url_is_refused_when_a_descriptor_is_parsed(provider):
    async def main():
        identity = await Identity.generate(provider)
        raw = await forged_descriptor(provider, identity, {"ws": [SSRF.format(port=8080)]})
        with pytest.raises(ProtocolError, match="link address"):
            await verify_descriptor(provider, raw, now=time.time())
        with pytest.raises(ProtocolError):  # and nobody signs one either
            await sign_descriptor(provider, identity, now=int(time.time()),
                                  addresses={"ws": (SSRF.format(port=8080),)}, capabilities=Capabilities())

    asyncio.run(main())


@pytest.mark.parametrize("text, reason", [
    ("ws://127.0.0.1:80", "loopback"), ("ws://10.1.2.3:80", "private"), ("ws://169.254.169.254:80", "link-local"),
    ("ws://[::1]:80", "loopback"), ("ws://[fe80::1]:80", "link-local"), ("ws://[::ffff:10.0.0.1]:80", "private"),
    ("ws://localhost:80", "loopback"), ("ws://relay.localhost:80", "loopback"), ("ws://0.0.0.0:80", "unspecified"),
])
def test_non_public_link_addresses_are_refused_by_default(text, reason):
    address = LinkAddress.parse(text)
    assert reason in address.refusal(allow_private=False)
    with pytest.raises(TransportError, match="network.allow_private_addresses"):
        address.check(allow_private=False)


def test_a_private_network_allows_local_ranges_but_never_unspecified_or_multicast():
    for text in ("ws://127.0.0.1:80", "ws://10.1.2.3:80", "ws://[::1]:80", "ws://localhost:80", "ws://169.254.0.9:80"):
        assert LinkAddress.parse(text).refusal(allow_private=True) is None
    for text in ("ws://0.0.0.0:80", "ws://224.0.0.1:80", "ws://192.0.2.1:80"):
        assert LinkAddress.parse(text).refusal(allow_private=True) is not None
    assert LinkAddress.parse("wss://relay.example.org").refusal(allow_private=False) is None  # judged once resolved


def test_every_resolved_answer_is_checked():
    assert check_resolved("r.example", [ip("8.8.8.8"), ip("8.8.8.8"), ip("2606:4700::1")], allow_private=False) \
        == [ip("8.8.8.8"), ip("2606:4700::1")]
    for answers in ([ip("8.8.8.8"), ip("127.0.0.1")], [ip("::ffff:192.168.0.1")], [ip("10.0.0.1")]):
        with pytest.raises(TransportError, match="r.example"):
            check_resolved("r.example", answers, allow_private=False)
    assert check_resolved("r.example", [ip("10.0.0.1")], allow_private=True) == [ip("10.0.0.1")]
    with pytest.raises(TransportError, match="no addresses"):
        check_resolved("r.example", [], allow_private=True)
    assert refusal(ip("1.1.1.1"), allow_private=False) is None


def test_the_directory_rule_names_the_offending_address():
    assert descriptor_refusal({"ws": ("ws://8.8.8.8:80",), "rtc": ("signal",)}, allow_private=False) is None
    assert "10.0.0.1" in descriptor_refusal({"ws": ("ws://8.8.8.8:80", "ws://10.0.0.1:80")}, allow_private=False)
    assert descriptor_refusal({"ws": ("ws://10.0.0.1:80",)}, allow_private=True) is None
    assert descriptor_refusal({"via": ("abc",)}, allow_private=False) is None


@pytest.mark.parametrize("page_host, allowed", [
    ("127.0.0.1", True), ("localhost", True), ("[::1]", True), ("10.99.0.1", True), ("192.168.1.20", True),
    ("mesh.example.org", False), ("8.8.8.8", False), ("[2606:4700::1]", False), ("0.0.0.0", False), ("", False),
])
def test_a_tab_allows_private_addresses_only_when_its_page_came_from_one(page_host, allowed):
    assert page_allows_private(page_host) is allowed
    # what the tab's node then does with a loopback relay's address
    refused = LinkAddress.parse("ws://127.0.0.1:9001").refusal(allow_private=page_allows_private(page_host))
    assert (refused is None) is allowed


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_peer_that_just_failed_is_not_redialled_until_redial_after(provider):
    async def main():
        identity = await Identity.generate(provider)
        descriptor = await sign_descriptor(provider, identity, now=int(time.time()),
                                           addresses={"ws": ("ws://8.8.8.8:9001",)})
        dials: list[LinkAddress] = []

        async def websocket(address: LinkAddress):
            dials.append(address)
            raise TransportError("tarpit")

        async def lookup(_peer):
            return descriptor

        clock = _Clock()
        dialer = TransportDialer(lookup, websocket=websocket, rtc=None, mode=lambda: "auto",
                                 redial_after=5.0, clock=clock)
        for _ in range(50):
            with pytest.raises(TransportError, match="tarpit"):
                await dialer(identity.peer_id)
        assert dials == [LinkAddress("ws", "8.8.8.8", 9001)] and dialer.stats["not_retried"] == 49
        clock.now += 5.0
        with pytest.raises(TransportError):
            await dialer(identity.peer_id)
        assert len(dials) == 2

    asyncio.run(main())


def test_redial_after_is_validated():
    with pytest.raises(ConfigError, match="redial_after"):
        TransportDialer(lambda peer: None, websocket=None, rtc=None, mode=lambda: "auto", redial_after=-1)


def test_a_wss_address_carries_a_certificate_pin_that_ws_cannot():
    pin = bytes(range(32))
    address = LinkAddress.parse(f"wss://relay.example:8443/v1/link#sha256={pin.hex()}")
    assert (address.pin, address.url) == (pin, "wss://relay.example:8443/v1/link")
    assert str(address) == f"wss://relay.example:8443/v1/link#sha256={pin.hex()}"
    for bad in (f"ws://relay.example/v1/link#sha256={pin.hex()}", "wss://relay.example/v1/link#sha256=abc",
                f"wss://relay.example/v1/link#sha256={pin.hex().upper()}", "wss://relay.example/v1/link#x"):
        with pytest.raises(ProtocolError):
            LinkAddress.parse(bad)
