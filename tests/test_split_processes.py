"""Split messages between two native nodes over real relay processes (issue 20 item 1, "Done when").

A signal server and three `zmesh relay` processes (relay N on 127.N.0.1); the destination is a
real relay (the `Relay` class, in this process so the test can read what it received) carrying a
``MeshVPN``; the sender is the node ``zmesh.connect`` builds. With ``hops=2`` every split path is one
relay process and the destination, so SIGKILLing a relay process kills exactly one share's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time

import pytest

from zmesh.aio.api import MeshVPN
from zmesh.aio.split import STORED, send_share
from zmesh.errors import SplitDeliveryError
from zmesh.split import Refusal, split
from zmesh_relay import config as settings
from zmesh_relay.mesh import open_native_mesh
from zmesh_relay.relay import Relay

from .conftest import wait_until
from .private_network import relay_listen
from .test_native_mesh import Process

MESSAGE = hashlib.shake_256(b"split 2-of-3").digest(256 * 1024)


@pytest.fixture
def relays(tmp_path, monkeypatch):
    monkeypatch.setenv("ZMESH_TRANSPORT_KIND", "websocket")  # no WebRTC fallback to a killed relay's offers
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        for number in (1, 2, 3):
            processes.append(Process("relay", "--signal", url, "--listen", relay_listen(number),
                                     "--data-dir", str(tmp_path / f"r{number}")))
        yield url, processes[1:]
    finally:
        for process in reversed(processes):
            process.stop()


async def _two_nodes(url: str, tmp_path):
    """The destination (a relay with a MeshVPN, on 127.4.0.1) and the sender, connected to it."""
    destination = Relay(settings.load(env=dict(os.environ), flags={
        "signaling.url": url, "relay.listen": relay_listen(4), "relay.data_dir": str(tmp_path / "bob")}))
    await destination.start()
    assert destination.driver is not None
    bob = MeshVPN(destination.driver, destination.directory.live, hops=2)
    await destination.directory.refresh()
    alice = await open_native_mesh(url, destination.peer_id.text, hops=2)
    return destination, bob, alice


async def _stop(destination: Relay, bob: MeshVPN, alice: MeshVPN) -> None:
    await alice.close()
    await bob.close()
    await destination.stop()


def _kill(process: Process) -> None:
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait()


def test_256_kib_split_2_of_3_arrives_with_one_path_killed_and_expired_shares_are_dropped(relays, tmp_path):
    url, processes = relays

    async def main() -> None:
        destination, bob, alice = await _two_nodes(url, tmp_path)
        events: list[bytes] = []
        bob.on("message", events.append)
        try:
            _kill(processes[0])
            stored = await asyncio.wait_for(alice.send_split(destination.peer_id, MESSAGE, k=2, n=3), 120)
            assert stored == 2
            assert await asyncio.wait_for(bob.receive(), 30) == MESSAGE
            assert events == [MESSAGE]
            assert not [c for c in alice.driver.node.circuits() if c != alice._circuit]  # split circuits closed

            # Expiry: message X is delivered, message Y gets one share; both then expire.
            circuit, _ = await alice._build(destination.peer_id)
            now = time.time()
            x = split(b"delivered before expiry", k=2, n=3, ttl=2, now=now)
            y = split(b"never delivered", k=2, n=3, ttl=2, now=now)
            assert [await send_share(alice.driver, circuit, s) for s in (x[0], x[1], y[0])] == [STORED] * 3
            assert await asyncio.wait_for(bob.receive(), 30) == b"delivered before expiry"
            await wait_until(lambda: time.time() >= x[0].expiry, timeout=10)
            assert await send_share(alice.driver, circuit, x[0]) == Refusal.EXPIRED  # a replay after expiry
            assert await send_share(alice.driver, circuit, y[1]) == Refusal.EXPIRED  # Y's kth share, too late
            assert bob._inbox.empty() and len(events) == 2
            assert bob.shares.inbox.pending_messages == 0 and bob.shares.inbox.pending_bytes == 0
        finally:
            await _stop(destination, bob, alice)

    asyncio.run(main())


def test_with_two_paths_killed_the_sender_gets_a_clear_error(relays, tmp_path):
    url, processes = relays

    async def main() -> None:
        destination, bob, alice = await _two_nodes(url, tmp_path)
        try:
            _kill(processes[0])
            _kill(processes[1])
            with pytest.raises(SplitDeliveryError) as failed:
                await asyncio.wait_for(alice.send_split(destination.peer_id, MESSAGE, k=2, n=3), 120)
            assert failed.value.delivered < 2 and failed.value.needed == 2 and len(failed.value.failures) >= 2
            assert "shares stored, 2 needed" in str(failed.value)
            assert bob._inbox.empty()
        finally:
            await _stop(destination, bob, alice)

    asyncio.run(main())
