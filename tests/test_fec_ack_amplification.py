"""Lying window updates (issue 19, defect 11): a receiver that lies about losses used to make the
sender compute and send a full window of repairs per 17-byte update (~18,000× the bytes), and the
next update could claim those repairs lost too. Against the real ``FecEndpoint`` (fake clock) and
``FecLink`` (in memory): updates are checked against what was sent, and repairs stay within the
budget — at most ``per_ack`` repair packets per update (4 × 1215 bytes at the defaults: ≤ 286×
the update's 17 bytes), at most ``share`` repair packets per source packet over the link's life,
and at most ``burst + rate × t`` bytes in any ``t`` seconds."""

import asyncio
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import wait_until
from zmesh.aio.fec import FecLink
from zmesh.errors import ConfigError, FECError
from zmesh.fec import Delivered, FecEndpoint, RepairBudget, RepairLimits
from zmesh.testing.memlink import memory_link_pair

SYMBOL = 1200
REPAIR_BYTES = SYMBOL + 15  # one repair packet
ACK = struct.Struct(">BIIII")
SOURCE_TYPE, REPAIR_TYPE = 0x10, 0x11


def ack(consumed: int, decoded: int, received: int, seen: int) -> bytes:
    return ACK.pack(0x12, *(value & 0xFFFFFFFF for value in (consumed, decoded, received, seen)))


def repair_bytes(packets: list[bytes]) -> int:
    return sum(len(p) for p in packets if p[0] == REPAIR_TYPE)


class Liar:
    """A receiver that reads every packet, keeps the sender's window full (acknowledging all but
    the newest ``lag`` symbols, so each repair spans a full window) and claims every packet lost."""

    def __init__(self, lag: int = 255) -> None:
        self.lag, self.next_seq, self.seen, self.sources = lag, 0, 0, 0

    def read(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.seen = max(self.seen, struct.unpack_from(">I", packet, 1)[0] + 1)
            if packet[0] == SOURCE_TYPE:
                self.next_seq = max(self.next_seq, struct.unpack_from(">I", packet, 5)[0] + 1)
                self.sources += 1

    def update(self) -> bytes:
        consumed = max(0, self.next_seq - self.lag)
        return ack(consumed, consumed, 0, self.seen)


def attack(limits: RepairLimits, *, seconds: float = 1.0, updates_per_ms: int = 3) -> tuple[int, int, Liar]:
    """One 1024-byte frame per ms while the liar sends ``updates_per_ms`` updates per ms. Returns
    (total repair bytes, largest repair bytes after one update, liar); fails as soon as one update
    buys more than ``per_ack`` repairs."""
    sender = FecEndpoint(rng=random.Random(1), repair_limits=limits)
    liar, total, largest, now = Liar(), 0, 0, 0.0
    for step in range(int(seconds * 1000)):
        now = step * 0.001
        if sender.writable:
            sender.send(bytes(1024), now)
        sender.handle_timer(now)
        out = sender.data_to_send()
        liar.read(out)
        total += repair_bytes(out)
        for _ in range(updates_per_ms):
            sender.receive(liar.update(), now)
            out = sender.data_to_send()
            liar.read(out)
            bought = repair_bytes(out)
            assert bought <= limits.per_ack * REPAIR_BYTES, f"one 17-byte update bought {bought} repair bytes"
            total, largest = total + bought, max(largest, bought)
    assert total == sender.repairs_sent * REPAIR_BYTES
    return total, largest, liar


def test_maximal_loss_claims_stay_within_per_update_and_per_source_bounds():
    limits = RepairLimits()
    total, largest, liar = attack(limits)
    assert largest <= limits.per_ack * REPAIR_BYTES  # ≤ 4860 bytes per 17-byte update (was 311,040)
    assert total <= limits.share * liar.sources * REPAIR_BYTES  # never more repairs than sources
    assert total <= limits.burst + limits.rate * 1.0


def test_the_token_bucket_bounds_repairs_per_second_when_sources_would_allow_more():
    limits = RepairLimits(share=8.0, rate=100_000, burst=20_000)
    total, _, liar = attack(limits, seconds=2.0)
    assert liar.sources * 8 * REPAIR_BYTES > 10 * total  # the volume credit is not what binds here
    assert total <= limits.burst + limits.rate * 2.0


def full_window_sender(**kwargs) -> FecEndpoint:
    sender = FecEndpoint(rng=random.Random(1), **kwargs)
    for _ in range(256):
        sender.send(bytes(1024), 0.0)
    sender.data_to_send()
    return sender


def test_a_replayed_update_buys_its_repairs_once():
    sender = full_window_sender()
    update = ack(0, 0, 200, 256)  # 56 losses revealed
    sender.receive(update, 0.001)
    first = repair_bytes(sender.data_to_send())
    for _ in range(1000):
        sender.receive(update, 0.002)
    assert first == 4 * REPAIR_BYTES and repair_bytes(sender.data_to_send()) == 0
    assert sender.encoder.stale_acks == 1000
    sender.receive(ack(0, 0, 190, 250), 0.003)  # older (reordered): ignored, not an error
    assert sender.encoder.stale_acks == 1001 and sender.data_to_send() == []


@pytest.mark.parametrize("update", [
    ack(0, 0, 0, 10_000),  # names packets never sent
    ack(0, 300, 0, 256),  # decoded symbols never sent
    ack(5, 4, 0, 256),  # consumed beyond decoded
    ack(0, 5, 150, 258),  # fewer received than before while more were numbered: invented losses
    ack(0, 10, 100, 250),  # seen going backwards while decoded goes forward
])
def test_updates_that_lie_are_fec_errors_and_change_nothing(update):
    sender = full_window_sender()
    sender.receive(ack(0, 5, 200, 256), 0.0)
    sender.data_to_send()
    before = (sender.encoder.window_start, sender.encoder.decoded, sender.encoder.packets_sent,
              sender.repairs_sent, sender.controller.loss)
    with pytest.raises(FECError):
        sender.receive(update, 0.01)
    assert sender.data_to_send() == []
    assert (sender.encoder.window_start, sender.encoder.decoded, sender.encoder.packets_sent,
            sender.repairs_sent, sender.controller.loss) == before


_u32 = st.integers(0, 2**32 - 1)
_near = st.integers(0, 400)  # near the real counts, where a lie is hardest to tell


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.tuples(_u32, _u32, _u32, _u32).map(lambda t: ack(*t)),
    st.tuples(_near, _near, _near, _near).map(lambda t: ack(*t)),
    st.tuples(_u32, _u32, _u32, st.binary(max_size=SYMBOL - 2))
    .map(lambda t: struct.pack(">BIII", SOURCE_TYPE, *t[:3]) + t[3]),
    st.tuples(_u32, _near, st.integers(0, 2**16 - 1), _u32, st.binary(min_size=SYMBOL, max_size=SYMBOL))
    .map(lambda t: struct.pack(">BIIHI", REPAIR_TYPE, *t[:4]) + t[4]),
), max_size=40))
def test_fuzzed_updates_and_packets_raise_only_fec_errors_and_buy_bounded_repairs(packets):
    sender = full_window_sender()
    for now, packet in enumerate(packets):
        try:
            sender.receive(packet, now * 0.001)
        except FECError:
            pass
        assert repair_bytes(sender.data_to_send()) <= RepairLimits().per_ack * REPAIR_BYTES


def test_honest_recovery_at_5_percent_loss_is_never_refused():
    """Fake clock, 5 % independent loss both ways, 25 ms each way: every frame arrives, in order,
    and the budget refuses no repair."""
    rng = random.Random(5)
    ends = (FecEndpoint(symbol_size=SYMBOL, rng=random.Random(2)), FecEndpoint(symbol_size=SYMBOL))
    in_flight: list[tuple[float, int, bytes]] = []
    got: list[bytes] = []
    frames = [i.to_bytes(4, "big") * 200 for i in range(3000)]
    now, sent = 0.0, 0
    while len(got) < len(frames):
        assert now < 30.0, "delivery stalled"
        now += 0.001
        if sent < len(frames) and ends[0].writable:
            ends[0].send(frames[sent], now)
            sent += 1
        for side in (0, 1):
            ends[side].handle_timer(now)
            in_flight += [(now + 0.025, 1 - side, p) for p in ends[side].data_to_send() if rng.random() >= 0.05]
        due = [item for item in in_flight if item[0] <= now]
        in_flight = [item for item in in_flight if item[0] > now]
        for _, side, packet in due:
            ends[side].receive(packet, now)
        while (event := ends[1].next_event()) is not None:
            assert isinstance(event, Delivered)
            got.append(event.payload)
    assert got == frames
    assert ends[0].budget.denied == 0 and ends[1].decoder.recovered > 0


def test_a_lying_peer_of_a_real_fec_link_gets_bounded_repairs():
    """In memory: the peer of a FecLink reads what it sends and answers every packet with an
    update claiming all of it lost. Tail probes are switched off (repair_interval 60 s), so every
    repair the link sends was bought by an update or by the repair ratio."""
    async def main():
        a, peer = memory_link_pair()
        link = FecLink(a, symbol_size=SYMBOL, repair_interval=60.0)
        liar, updates, frames = Liar(), 0, 600

        async def lie():
            nonlocal updates
            while True:
                liar.read([await peer.recv()])
                await peer.send(liar.update())
                updates += 1

        liar_task = asyncio.get_running_loop().create_task(lie())
        try:
            for _ in range(frames):
                await link.send(bytes(1024))
            await wait_until(lambda: liar.sources == frames)
        finally:
            liar_task.cancel()
            await asyncio.gather(liar_task, return_exceptions=True)
            await link.close()
        repairs = link.endpoint.repairs_sent
        assert repairs <= RepairLimits().share * frames  # ≤ one repair per source packet
        assert repairs * REPAIR_BYTES <= 4 * REPAIR_BYTES * updates + RepairLimits().burst
        assert link.endpoint.budget.denied > 0  # the liar asked for more than it got

    asyncio.run(main())


@pytest.mark.parametrize("kwargs", [{"per_ack": -1}, {"per_ack": 65}, {"share": -0.1}, {"share": 9.0},
                                    {"rate": 0}, {"burst": 0}])
def test_absurd_repair_limits_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        RepairLimits(**kwargs)


def test_inconsistent_repair_limits_are_config_errors():
    with pytest.raises(ConfigError, match="burst"):
        RepairBudget(RepairLimits(burst=1000), REPAIR_BYTES)
    with pytest.raises(ConfigError, match="share"):
        FecEndpoint(max_repair=2.0, repair_limits=RepairLimits(share=1.0))
