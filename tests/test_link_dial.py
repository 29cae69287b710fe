"""Hostile link addresses against real processes: a tarpit costs a relay nothing after the dial
deadline, and descriptors cannot make relays or the directory reach private addresses (issue 19,
defects 1 and 4)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from aiohttp import web

from zmesh.aio.driver import NodeDriver
from zmesh.cells import DestroyReason
from zmesh.descriptor import Descriptor, sign_descriptor, verify_descriptor
from zmesh.errors import CircuitError, TransportError
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.netaddr import LinkAddress
from zmesh.node import Node
from zmesh_relay import wslink

from .conftest import wait_until
from .private_network import relay_listen
from .probed import ProbeAnswerer, every, is_listed, nothing_pending
from .test_native_mesh import Process
from .test_netaddr import SSRF, forged_descriptor

DEADLINE = 1.0  # the relays' dial deadline in these tests (transport.dial_timeout)
RELAY_ENV = {"ZMESH_TRANSPORT_KIND": "websocket", "ZMESH_TRANSPORT_DIAL_TIMEOUT": str(DEADLINE),
             "ZMESH_TRANSPORT_REDIAL_AFTER": "120"}
PRIVATE_OFF = {"ZMESH_NETWORK_ALLOW_PRIVATE_ADDRESSES": "false"}


class Tarpit:
    """A TCP listener that accepts and never answers; it counts connections and how many of them
    the dialer has closed."""

    def __init__(self) -> None:
        self.accepted = self.closed = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Tarpit:
        self._server = await asyncio.start_server(self._hold, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        await reader.read()  # until the dialer gives up and closes
        self.closed += 1

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def open_fds(process: Process) -> int:
    return len(os.listdir(f"/proc/{process.proc.pid}/fd"))


def _post(signal_url: str, raw: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{signal_url}/v1/descriptors", data=raw, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def publish_fake(provider: NativeCryptoProvider, signal_url: str, address: str,
                       answerer: ProbeAnswerer) -> Descriptor:
    """A validly signed relay descriptor whose only link address is ``address``, where ``answerer``
    passes the signal server's probe for it (the signal server lists only relays that do)."""
    identity = await Identity.generate(provider)
    answerer.identities[identity.peer_id] = identity
    descriptor = await sign_descriptor(provider, identity, now=int(time.time()), addresses={"ws": (address,)})
    status, body = await asyncio.to_thread(_post, signal_url, descriptor.raw)
    assert (status, body.get("status")) == (202, "pending"), body
    return descriptor


async def listed_then_tarpit(provider: NativeCryptoProvider, signal_url: str, host: str, count: int,
                             address: Callable[[int], str]) -> tuple[list[Descriptor], Tarpit]:
    """``count`` fake relays at ``address(port)`` on ``host`` that pass their probe and are listed;
    then a tarpit takes over the port: relays that were reachable once and are not any more."""
    answerer = await ProbeAnswerer(provider).start(host)
    fakes = [await publish_fake(provider, signal_url, address(answerer.port), answerer) for _ in range(count)]
    await wait_until(every(0.05, lambda: nothing_pending(signal_url)), timeout=20)
    assert all(is_listed(signal_url, fake.peer_id) for fake in fakes)
    await answerer.stop()
    return fakes, await Tarpit().start(host, answerer.port)


async def relay_descriptor(provider: NativeCryptoProvider, signal_url: str, relay: Process) -> Descriptor:
    peer = PeerId.from_text(relay.address[1])
    with urllib.request.urlopen(f"{signal_url}/v1/relays/{peer.text}", timeout=5) as response:
        raw = base64.b64decode(json.load(response)["descriptor"])
    return await verify_descriptor(provider, raw, now=time.time())


async def client_of(provider: NativeCryptoProvider, relay: Descriptor) -> NodeDriver:
    """A test client whose only link is to ``relay``: every hop after it is an EXTEND the relay dials."""
    address = LinkAddress.parse(relay.addresses["ws"][0])

    async def dialer(peer: PeerId, _role):
        assert peer == relay.peer_id
        return await wslink.dial(address, allow_private=True)

    driver = NodeDriver(Node(await Identity.generate(provider), provider, time.monotonic), dialer=dialer)
    await driver.connect(relay.peer_id)
    return driver


async def extend_fails(driver: NodeDriver, relay: Descriptor, target: Descriptor) -> None:
    """EXTEND from ``relay`` to ``target`` must fail cleanly, naming ``target``."""
    with pytest.raises(CircuitError) as info:
        await driver.build_circuit([relay, target])
    assert (info.value.reason, info.value.failed_peer) == (DestroyReason.CONNECT_FAILED, target.peer_id)


def test_tarpit_link_addresses_cost_a_relay_no_descriptor_after_the_dial_deadline(provider, tmp_path):
    signal = Process("signal", "--listen", "127.0.0.1:0", "--max-relays-per-source", "16")  # all from loopback
    relay = None
    try:
        url = signal.address[0]
        relay = Process("relay", "--signal", url, "--listen", relay_listen(1), "--data-dir", str(tmp_path),
                        env=RELAY_ENV)

        async def main() -> None:
            fakes, tarpit = await listed_then_tarpit(provider, url, "127.0.0.1", 10,
                                                     lambda port: f"ws://127.0.0.1:{port}/v1/link")
            home = await relay_descriptor(provider, url, relay)
            driver = await client_of(provider, home)
            try:
                # an EXTEND to a peer nobody published makes the relay fetch the directory (and so
                # learn the fakes) before the baseline, so no directory fetch runs during the attack
                unknown = await sign_descriptor(provider, await Identity.generate(provider), now=int(time.time()))
                await extend_fails(driver, home, unknown)
                baseline = open_fds(relay)

                started = time.monotonic()
                builds = [extend_fails(driver, home, fakes[index % 10]) for index in range(30)]
                attack = asyncio.gather(*builds)
                await wait_until(lambda: tarpit.accepted >= 10, timeout=20)
                held = open_fds(relay)
                await attack
                failed_after = time.monotonic() - started
                await wait_until(lambda: tarpit.closed == 10, timeout=20)
                await wait_until(lambda: open_fds(relay) <= baseline + 2, timeout=20)
                print(f"relay fds: baseline {baseline}, held {held}, after {open_fds(relay)}; "
                      f"30 EXTENDs failed after {failed_after:.2f} s")
                assert held >= baseline + 10  # the measurement sees the tarpit's sockets
                assert tarpit.accepted == 10  # three EXTENDs to one peer share one dial

                # a second round right away: those peers just failed, so nobody dials them again
                await asyncio.gather(*(extend_fails(driver, home, fakes[index % 10]) for index in range(30)))
                assert tarpit.accepted == 10
            finally:
                await driver.close()
                await tarpit.stop()

        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        if relay is not None:
            relay.stop()
        signal.stop()


PRIVATE_TARGETS = {"127.0.0.1": ("127.0.0.1", "ws://127.0.0.1:{port}/v1/link"),
                   "::1": ("::1", "ws://[::1]:{port}/v1/link"),
                   "10.99.0.1": ("10.99.0.1", "ws://10.99.0.1:{port}"),
                   "localhost": ("127.0.0.1", "ws://localhost:{port}/v1/link")}


def test_relays_dial_private_link_addresses_only_on_a_declared_private_network(provider, tmp_path):
    signal = Process("signal", "--listen", "127.0.0.1:0")  # this test run declares the private network
    relays: list[Process] = []
    try:
        url = signal.address[0]
        for number, (name, env) in enumerate((("off", {**RELAY_ENV, **PRIVATE_OFF}), ("on", RELAY_ENV)), 1):
            relays.append(Process("relay", "--signal", url, "--listen", relay_listen(number),
                                  "--data-dir", str(tmp_path / name), env=env))

        async def main() -> None:
            listeners, targets = {}, {}
            for name, (host, address) in PRIVATE_TARGETS.items():
                fakes, listeners[name] = await listed_then_tarpit(provider, url, host, 1,
                                                                  lambda port, text=address: text.format(port=port))
                targets[name] = fakes[0]
            refusing, dialing = [await relay_descriptor(provider, url, relay) for relay in relays]
            try:
                driver = await client_of(provider, refusing)
                for target in targets.values():
                    await extend_fails(driver, refusing, target)
                await driver.close()
                assert {name: tarpit.accepted for name, tarpit in listeners.items()} == dict.fromkeys(listeners, 0)

                driver = await client_of(provider, dialing)
                await asyncio.gather(*(extend_fails(driver, dialing, target) for target in targets.values()))
                await driver.close()
                assert all(tarpit.accepted >= 1 for tarpit in listeners.values()), \
                    {name: tarpit.accepted for name, tarpit in listeners.items()}
            finally:
                for tarpit in listeners.values():
                    await tarpit.stop()

        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        for relay in relays:
            relay.stop()
        signal.stop()


@pytest.mark.parametrize("address", ["ws://127.0.0.1:9", "ws://10.99.0.1:9", "ws://169.254.169.254:80",
                                     "ws://[::1]:9", "ws://[fe80::1]:80", "ws://localhost:9"])
def test_a_node_refuses_private_link_addresses_before_any_connection(address):
    resolved = []

    async def resolver(host, port):
        resolved.append(host)
        return []

    with pytest.raises(TransportError, match="network.allow_private_addresses"):
        asyncio.run(wslink.dial(LinkAddress.parse(address), allow_private=False, resolver=resolver))
    assert resolved == []  # refused before resolving, so before connecting


def test_a_name_resolving_to_a_private_address_is_refused_after_resolution():
    async def rebinding(host, port):
        return [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("127.0.0.1")]

    with pytest.raises(TransportError, match="127.0.0.1 .*relay.example.org.*loopback"):
        asyncio.run(wslink.dial(LinkAddress.parse("wss://relay.example.org"), allow_private=False,
                                resolver=rebinding))


def test_a_relay_cannot_redirect_a_dial_elsewhere():
    """The upgrade answered with a redirect to the loopback admin page must not reach it."""
    requests: list[str] = []

    async def main() -> None:
        async def admin(request: web.Request) -> web.Response:
            requests.append(request.path_qs)
            return web.Response(text="rebooting")

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(SSRF.format(port=admin_port).replace("ws://", "http://"))

        app = web.Application()
        app.router.add_get("/admin/reboot", admin)
        app.router.add_get("/v1/link", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        admin_port = runner.addresses[0][1]
        try:
            with pytest.raises(TransportError, match="redirect"):
                await wslink.dial(LinkAddress("ws", "127.0.0.1", admin_port), allow_private=True)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert requests == []


def test_the_directory_refuses_the_ssrf_url_and_private_addresses_unless_declared(provider):
    signals = [Process("signal", "--listen", "127.0.0.1:0", env=PRIVATE_OFF),
               Process("signal", "--listen", "127.0.0.1:0")]
    try:
        public, private = (signal.address[0] for signal in signals)

        async def main() -> None:
            identity = await Identity.generate(provider)
            ssrf = await forged_descriptor(provider, identity, {"ws": [SSRF.format(port=8080)]})
            for url in (public, private):
                status, body = await asyncio.to_thread(_post, url, ssrf)
                assert (status, body["error"]) == (400, "malformed"), body
            for address in ("ws://127.0.0.1:9001/v1/link", "ws://[::1]:9001", "ws://10.0.0.1:9001",
                            "ws://169.254.169.254:80", "ws://localhost:9001"):
                descriptor = await sign_descriptor(provider, await Identity.generate(provider),
                                                   now=int(time.time()), addresses={"ws": (address,)})
                status, body = await asyncio.to_thread(_post, public, descriptor.raw)
                assert (status, body["error"]) == (403, "private_address"), body
                assert (await asyncio.to_thread(_post, private, descriptor.raw))[0] == 202  # to be probed
            public_relay = await sign_descriptor(provider, identity, now=int(time.time()),
                                                 addresses={"ws": ("wss://relay.example.org/v1/link",)})
            assert (await asyncio.to_thread(_post, public, public_relay.raw))[0] == 202

        asyncio.run(main())
    finally:
        for signal in signals:
            signal.stop()


def test_closing_a_link_to_a_peer_that_never_answers_is_bounded(monkeypatch):
    """A peer that completes the upgrade and then neither reads nor answers the closing handshake
    cannot hold a link's close (and its socket) for aiohttp's own close timeout, 10 s."""
    monkeypatch.setattr(wslink, "CLOSE_TIMEOUT", 0.2)

    async def upgrade_then_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        held.append(writer)  # never read again, never answer

    async def main():
        server = await asyncio.start_server(upgrade_then_ignore, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            link = await wslink.dial(LinkAddress.parse(f"ws://127.0.0.1:{port}"), allow_private=True, timeout=5)
            started = time.monotonic()
            await link.close()
            assert time.monotonic() - started < 2.0
        finally:
            for writer in held:
                writer.close()
            server.close()

    held: list[asyncio.StreamWriter] = []
    asyncio.run(main())
