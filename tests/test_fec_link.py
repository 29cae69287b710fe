"""FecLink and FecEndpoint: in order, exactly once over lossy and reordering links, gaps surfaced as
LostFrames instead of hangs, hostile packets close the link with FECError, bounded buffers, and no
repair overhead on a clean link."""

import asyncio
import hashlib
import random
import struct

import pytest

from zmesh.aio.fec import FecLink
from zmesh.errors import ConfigError, FECError, LinkClosed
from zmesh.fec import Delivered, FecEndpoint, LostFrames, TetrysEncoder
from zmesh.testing.memlink import memory_link_pair


class ChaosLink:
    """One end of a simulated unordered, unreliable link: drops frames with ``drop(frame)`` and
    delivers the rest in a shuffled order within groups of ``reorder``; a smaller group is
    released on the next event-loop turn."""

    ordered = False
    reliable = False

    def __init__(self, peer_inbox: asyncio.Queue, inbox: asyncio.Queue, *, drop, reorder: int,
                 rng: random.Random, max_frame_size: int = 1 << 16) -> None:
        self._peer, self._inbox, self._drop, self._reorder, self._rng = peer_inbox, inbox, drop, reorder, rng
        self._held: list[bytes] = []
        self.max_frame_size = max_frame_size
        self.closed = False

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise LinkClosed("closed")
        if self._drop(frame):
            return
        self._held.append(frame)
        if len(self._held) >= self._reorder:
            self._release()
        else:  # never hold a frame for long: release on the next loop turn if nothing follows
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        self._rng.shuffle(self._held)
        for frame in self._held:
            self._peer.put_nowait(frame)
        self._held.clear()

    async def recv(self) -> bytes:
        if self.closed:
            raise LinkClosed("closed")
        frame = await self._inbox.get()
        if frame is None:
            raise LinkClosed("closed")
        return frame

    async def close(self) -> None:
        self.closed = True
        self._inbox.put_nowait(None)


def chaos_pair(*, drop, reorder=4, seed=0):
    rng = random.Random(seed)
    a_in, b_in = asyncio.Queue(), asyncio.Queue()
    return (ChaosLink(b_in, a_in, drop=drop, reorder=reorder, rng=rng),
            ChaosLink(a_in, b_in, drop=drop, reorder=reorder, rng=rng))


async def exchange(sender: FecLink, receiver: FecLink, frames: list[bytes]) -> list[bytes]:
    async def send_all():
        for frame in frames:
            await sender.send(frame)

    async with asyncio.TaskGroup() as group:
        group.create_task(send_all())
        got = [await asyncio.wait_for(receiver.recv(), 30) for _ in frames]
    return got


def random_frames(seed: int, count: int, largest: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(0, largest)) for _ in range(count)]


@pytest.mark.parametrize("loss", [0.0, 0.1, 0.2])
def test_fec_link_over_a_lossy_memory_link_delivers_everything_once_in_order(loss):
    async def main():
        a, b = memory_link_pair(loss=loss, seed=7)
        sender = FecLink(a, symbol_size=512, window=64, min_repair=0.05 if loss else 0.0, max_repair=0.6)
        receiver = FecLink(b, symbol_size=512, window=64)
        frames = random_frames(3, 1500, sender.max_frame_size)
        try:
            got = await exchange(sender, receiver, frames)
        finally:
            await sender.close()
            await receiver.close()
        assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(b"".join(frames)).digest()
        assert got == frames
        assert receiver.reliable is (loss == 0.0) and receiver.ordered
        if loss:
            assert receiver.endpoint.decoder.recovered > 0
        with pytest.raises(LinkClosed):
            await receiver.recv()

    asyncio.run(main())


def test_fec_link_over_a_reordering_bursty_link_both_directions():
    async def main():
        rng = random.Random(11)
        bad = False

        def drop(_frame):  # Gilbert-Elliott
            nonlocal bad
            bad = rng.random() >= 0.3 if bad else rng.random() < 0.03
            return rng.random() < (0.5 if bad else 0.02)

        a, b = chaos_pair(drop=drop, reorder=5, seed=5)
        left = FecLink(a, symbol_size=256, window=128, min_repair=0.1, max_repair=0.8)
        right = FecLink(b, symbol_size=256, window=128, min_repair=0.1, max_repair=0.8)
        there, back = random_frames(1, 800, 254), random_frames(2, 800, 254)
        try:
            async with asyncio.TaskGroup() as group:
                forward = group.create_task(exchange(left, right, there))
                backward = group.create_task(exchange(right, left, back))
        finally:
            await left.close()
            await right.close()
        assert forward.result() == there and backward.result() == back

    asyncio.run(main())


def test_loss_beyond_repair_surfaces_as_lost_frames_and_delivery_goes_on():
    """Every data packet of frames 10..14 (and any repair) is dropped while no repair is
    configured: recv raises LostFrames(10, 14) after max_stall, then frames 15.. arrive."""
    async def main():
        def drop(frame):
            if frame[0] == 0x11:
                return True  # no repair ever arrives
            return frame[0] == 0x10 and 10 <= struct.unpack_from(">I", frame, 5)[0] <= 14

        a, b = chaos_pair(drop=drop, reorder=1)
        sender = FecLink(a, symbol_size=64, window=32, max_repair=0.0, max_stall=0.05)
        receiver = FecLink(b, symbol_size=64, window=32, max_stall=0.05)
        frames = [bytes([i]) for i in range(30)]
        got, lost = [], []

        async def receive_all():
            while len(got) < 25:
                try:
                    got.append(await asyncio.wait_for(receiver.recv(), 30))
                except LostFrames as gap:
                    lost.append((gap.first, gap.last))

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(receive_all())
                for frame in frames:
                    await sender.send(frame)
        finally:
            await sender.close()
            await receiver.close()
        assert lost == [(10, 14)]
        assert got == frames[:10] + frames[15:]

    asyncio.run(main())


def test_a_hostile_packet_closes_the_link_with_fec_error():
    async def main():
        a, b = memory_link_pair()
        receiver = FecLink(b, symbol_size=64, window=16)
        await a.send(struct.pack(">BIIHI", 0x11, 0, 0, 9999, 1) + bytes(64))  # absurd window
        with pytest.raises(FECError, match="spans"):
            await asyncio.wait_for(receiver.recv(), 10)
        with pytest.raises(LinkClosed):
            await receiver.recv()
        with pytest.raises(LinkClosed):
            await receiver.send(b"x")
        await receiver.close()

    asyncio.run(main())


def test_constructor_limits_are_config_errors():
    async def main():
        a, _ = memory_link_pair(max_frame_size=600)
        with pytest.raises(ConfigError, match="max_frame_size"):
            FecLink(a, symbol_size=600)
        with pytest.raises(ConfigError):
            FecLink(a, symbol_size=256, window=0)
        with pytest.raises(ConfigError):
            FecLink(a, symbol_size=256, min_repair=0.9, max_repair=0.1)

    asyncio.run(main())


def endpoint_pair(**kwargs):
    return FecEndpoint(symbol_size=64, window=32, rng=random.Random(1), **kwargs), \
        FecEndpoint(symbol_size=64, window=32, **kwargs)


def test_clean_link_sends_no_repairs_beyond_the_tail():
    """Fake clock, lossless, 1 ms apart: only acknowledgements go back, and the one tail repair
    the sender may send before the last window update arrives."""
    sender, receiver = endpoint_pair()
    now = 0.0
    for i in range(2000):
        now += 0.001
        sender.send(i.to_bytes(2, "big"), now)
        for packet in sender.data_to_send():
            receiver.receive(packet, now)
        receiver.handle_timer(now)
        while (event := receiver.next_event()) is not None:
            assert event == Delivered(i, i.to_bytes(2, "big"))
        for packet in receiver.data_to_send():
            sender.receive(packet, now)
    assert sender.repairs_sent == 0 and sender.controller.ratio == 0.0


def test_receiver_holds_the_window_until_the_application_consumes():
    """The sender's window is released only as frames are taken: buffers stay bounded by window."""
    sender, receiver = endpoint_pair()
    for i in range(32):
        sender.send(bytes([i]), 0.0)
    for packet in sender.data_to_send():
        receiver.receive(packet, 0.0)
    receiver.handle_timer(1.0)
    for packet in receiver.data_to_send():
        sender.receive(packet, 1.0)
    assert not sender.writable  # nothing consumed yet
    assert receiver.next_event() == Delivered(0, b"\x00")
    receiver.handle_timer(2.0)
    for packet in receiver.data_to_send():
        sender.receive(packet, 2.0)
    assert sender.writable and sender.encoder.window_start == 1


def test_a_peer_ignoring_the_window_is_refused():
    """The inbox never holds more than ``window`` frames: a sender that does not wait for window
    updates is a protocol violation, not a reason to buffer without bound."""
    _, receiver = endpoint_pair()
    rogue = TetrysEncoder(symbol_size=64, max_window=32)
    for i in range(32):
        receiver.receive(rogue.source(bytes([i])), 0.0)
    rogue.on_ack(struct.pack(">BIIII", 0x12, 32, 32, 32, 32))  # as if everything had been consumed
    with pytest.raises(FECError, match="window"):
        receiver.receive(rogue.source(b"one too many"), 0.0)


def test_lost_window_updates_are_recovered_by_probing():
    """Every window update of the first second is lost while the sender's window is full: its
    tail repairs (probes, backing off) make the receiver repeat the update, and sending resumes."""
    sender, receiver = endpoint_pair()
    for i in range(32):
        sender.send(bytes([i]), 0.0)
    now = 0.0
    while not sender.writable:
        assert now < 10.0, "the sender never learnt that its window was free"
        now = min(t for t in (sender.get_timer(), receiver.get_timer(), now + 0.01) if t is not None)
        sender.handle_timer(now)
        for packet in sender.data_to_send():
            receiver.receive(packet, now)
        receiver.handle_timer(now)
        while receiver.next_event() is not None:
            pass
        for packet in receiver.data_to_send():
            if now >= 1.0:  # before that, every window update is lost
                sender.receive(packet, now)
    assert sender.encoder.window_start == 32 and sender.repairs_sent > 0
