"""Entry guards (zmesh.guards) on a fake clock: the sample, the primary guards, lifetimes, the retry
schedule's bound on what an attacker who toggles a guard's reachability can achieve, the guard
never a middle or exit, tabs never sampled, and strict decoding of the state file."""

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.aio.building import build_around_failures
from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.encoding import pack_canonical
from zmesh.errors import CircuitError, ConfigError
from zmesh.guards import (
    DAY,
    HOUR,
    MINUTE,
    OTHER_RETRY,
    PRIMARY_RETRY,
    Guard,
    GuardManager,
    GuardParams,
    decode_guards,
    retry_after,
)
from zmesh.identity import Identity
from zmesh.path import PathSelector
from zmesh.testing.memnet import MemoryNetwork, echo_service

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def _descriptor(provider, index: int, *, exit_: bool = False, tab: bool = False, relay: bool = True):
    identity = await Identity.generate(provider)
    addresses = {"via": ("home",), "rtc": ("signal",)} if tab else {"ws": (f"ws://10.{index}.0.1:9000",)}
    return await sign_descriptor(provider, identity, now=int(NOW), addresses=addresses,
                                 capabilities=Capabilities(relay=relay, exit=exit_, bandwidth=1000),
                                 exit_ports=((1, 65535),) if exit_ else ())


@pytest.fixture(scope="module")
def relays(provider):
    """30 listening relays (every third an exit), 5 tabs, 2 nodes that do not relay."""
    async def make():
        listening = [await _descriptor(provider, i, exit_=i % 3 == 0) for i in range(30)]
        tabs = [await _descriptor(provider, 100 + i, tab=True) for i in range(5)]
        clients = [await _descriptor(provider, 200 + i, relay=False) for i in range(2)]
        return listening, tabs, clients
    return asyncio.run(make())


def manager(clock: Clock, seed: int = 1, **params) -> GuardManager:
    return GuardManager(GuardParams(**params), clock=clock, rng=random.Random(seed))


def test_sample_is_bounded_and_drawn_from_listening_relays_never_tabs(relays):
    listening, tabs, clients = relays
    guards = manager(Clock())
    for _ in range(5):  # repeated listings never grow it past its size
        guards.update(tabs + clients + listening)
    ids = {r.peer_id for r in listening}
    assert len(guards.sample()) == 20 and set(guards.sample()) <= ids
    assert len(guards.primary()) == 2 and guards.primary() == guards.sample()[:2]

    small = manager(Clock(), sample_size=40)
    small.update(tabs + clients + listening)
    assert set(small.sample()) == ids  # every listening relay, and no tab or non-relay
    with_tabs = manager(Clock(), sample_size=40, allow_tabs=True)
    with_tabs.update(tabs + listening)
    assert {r.peer_id for r in tabs} <= set(with_tabs.sample())


def test_every_circuit_enters_at_the_first_primary_guard_which_is_never_middle_or_exit(relays):
    listening, tabs, _ = relays
    guards, selector = manager(Clock()), PathSelector()
    for seed in range(300):
        for hops in (2, 3, 5):
            path = guards.select(selector, listening + tabs, hops=hops, rng=random.Random(seed))
            assert path[0].peer_id == guards.primary()[0]
            assert guards.primary()[0] not in {r.peer_id for r in path[1:]}
            assert len({r.peer_id for r in path}) == hops


def test_a_guard_that_leaves_no_path_is_passed_over_for_the_next_in_sample_order(relays):
    listening, _, _ = relays
    only_exit = [r for r in listening if not r.capabilities.exit] + [listening[0]]
    # The only exit is the first guard: a circuit cannot both enter and leave there.
    order = [listening[0], *only_exit[:3]]
    guards = GuardManager(clock=Clock(), rng=random.Random(0),
                          guards=[Guard(r.peer_id, NOW, NOW + 40 * DAY) for r in order])
    path = guards.select(PathSelector(), only_exit, hops=3, rng=random.Random(0))
    assert path[0].peer_id == order[1].peer_id and path[-1].peer_id == order[0].peer_id


def test_lifetime_is_30_to_60_days_and_an_expired_guard_is_replaced(relays):
    listening, _, _ = relays
    clock = Clock()
    guards = manager(clock)
    guards.update(listening)
    stored = decode_guards(guards.to_bytes(), "state")
    lifetimes = [g.expires_at - g.added_at for g in stored]
    assert all(30 * DAY <= t <= 60 * DAY for t in lifetimes) and len(set(lifetimes)) == len(lifetimes)
    soonest = min(stored, key=lambda g: g.expires_at)
    rest = [p for p in guards.sample() if p != soonest.peer_id]
    clock.now = soonest.expires_at + 1  # stored in whole seconds
    guards.update(listening)
    # The others keep their order; a new draw fills the tail (it may be the same relay, as a new guard).
    assert guards.sample()[:19] == rest and len(guards.sample()) == 20 and guards.primary() == rest[:2]
    clock.now = NOW + 60 * DAY
    guards.update(listening)
    # Nobody outlives 60 days (a relay may be drawn again, as a new guard with a new lifetime).
    assert all(g.added_at > NOW for g in decode_guards(guards.to_bytes(), "state"))


def test_an_unlisted_guard_steps_aside_and_leaves_only_after_20_days(relays):
    listening, _, _ = relays
    clock = Clock()
    guards = manager(clock, seed=3)
    guards.update(listening)
    first, second = guards.primary()
    third = guards.sample()[2]
    without = [r for r in listening if r.peer_id != first]
    for day in range(19):
        clock.now = NOW + day * DAY
        guards.update(without)
        assert guards.primary() == [second, third] and guards.sample()[0] == first
    guards.update(listening)  # back in the directory: first in line again
    assert guards.primary() == [first, second]
    clock.now = NOW + 20 * DAY
    guards.update(without)
    clock.now = NOW + 40 * DAY - 1
    guards.update(without)
    assert first in guards.sample()
    clock.now = NOW + 40 * DAY
    guards.update(without)
    assert first not in guards.sample()


def test_retry_schedule_is_tors_legacy_one():
    assert [retry_after(PRIMARY_RETRY, t) for t in (0, 6 * HOUR - 1, 6 * HOUR, 96 * HOUR, 7 * DAY, 300 * DAY)] \
        == [10 * MINUTE, 10 * MINUTE, 90 * MINUTE, 4 * HOUR, 9 * HOUR, 9 * HOUR]
    assert [retry_after(OTHER_RETRY, t) for t in (0, 6 * HOUR, 96 * HOUR, 7 * DAY)] \
        == [HOUR, 4 * HOUR, 18 * HOUR, 36 * HOUR]


def test_a_failed_guard_hands_over_to_the_next_in_the_sample_and_is_retried_on_schedule(relays):
    listening, _, _ = relays
    clock = Clock()
    guards, selector = manager(clock), PathSelector()
    guards.update(listening)
    first, second = guards.primary()
    third = guards.sample()[2]
    guards.first_hop(first, False)
    assert guards.select(selector, listening, rng=random.Random(0))[0].peer_id == second
    guards.first_hop(second, False)
    assert guards.select(selector, listening, rng=random.Random(0))[0].peer_id == third  # not a fresh draw
    clock.now += 10 * MINUTE
    assert guards.select(selector, listening, rng=random.Random(0))[0].peer_id == first
    assert guards.primary() == [first, second]  # failures never change the sample


def run_circuits(guards: GuardManager, clock: Clock, relays, minutes: range, down) -> tuple[list, int]:
    """A circuit at each of ``minutes``; its first hop fails while ``down(minute)`` and it is the
    first primary guard. Returns the entry of each circuit and how many failed."""
    first, entries, failures = guards.primary()[0], [], 0
    for minute in minutes:
        clock.now = NOW + minute * MINUTE
        entry = guards.select(PathSelector(), relays, rng=random.Random(minute))[0].peer_id
        failed = entry == first and down(minute)
        entries.append(entry)
        failures += failed
        guards.first_hop(entry, not failed)
    return entries, failures


def test_an_attacker_toggling_a_guard_moves_the_client_only_within_its_primary_guards(relays):
    """For 2 days the attacker knocks the first guard offline every other 5 minutes (576 toggles)
    while a circuit is built every minute (2880 builds): the client only ever enters at its two
    primary guards, the sample never changes, and the guard is tried while down at most once per
    outage (then it waits 10 minutes) — the schedule's bound, not the attacker's choice."""
    listening, _, _ = relays
    clock = Clock()
    guards = manager(clock)
    guards.update(listening)
    sample, primary = guards.sample(), guards.primary()
    entries, failures = run_circuits(guards, clock, listening, range(2 * 24 * 60), lambda m: (m // 5) % 2 == 1)
    switches = sum(a != b for a, b in zip(entries, entries[1:], strict=False))
    outages = 2 * 24 * 60 // 10
    assert set(entries) == set(primary) and guards.sample() == sample and guards.primary() == primary
    assert failures <= outages and switches <= 2 * outages


def test_a_guard_down_for_good_is_retried_ever_more_rarely(relays):
    listening, _, _ = relays
    clock = Clock()
    guards = manager(clock)
    guards.update(listening)
    primary = guards.primary()
    entries, failures = run_circuits(guards, clock, listening, range(0, 7 * 24 * 60, 5), lambda _: True)
    # 36 tries in the first 6 h (every 10 min), 60 until 96 h (every 90 min), 18 until 7 days (4 h).
    assert failures == entries.count(primary[0]) <= 36 + 60 + 18 + 1
    assert set(entries) == set(primary) and guards.primary() == primary


def test_when_every_guard_waits_out_a_retry_all_are_tried_again_from_the_top(relays):
    listening, _, _ = relays
    guards = manager(Clock(), sample_size=3, primary=2)
    guards.update(listening[:3])
    for peer in guards.sample():
        guards.first_hop(peer, False)
    path = guards.select(PathSelector(), listening[:3] + listening[3:6], hops=2, rng=random.Random(0))
    assert path[0].peer_id == guards.sample()[0]
    with pytest.raises(CircuitError, match="none of the 3"):
        guards.select(PathSelector(), listening[3:6], hops=2)  # no guard listed: no silent fresh draw


def test_state_round_trips_and_is_saved_on_every_change_but_not_on_reachability(relays):
    listening, _, _ = relays
    clock, saved = Clock(), []
    guards = GuardManager(clock=clock, rng=random.Random(2), on_change=saved.append)
    guards.update(listening)
    assert len(saved) == 1
    guards.update(listening)
    guards.first_hop(guards.primary()[0], False)
    assert len(saved) == 1
    guards.update(listening[1:])
    assert len(saved) == (2 if listening[0].peer_id in guards.sample() else 1)
    loaded = GuardManager.from_bytes(saved[-1], what="state", clock=clock, rng=random.Random(9))
    assert loaded.sample() == guards.sample() and loaded.to_bytes() == saved[-1]
    assert GuardManager.from_bytes(saved[-1], what="state", params=GuardParams(sample_size=5),
                                   clock=clock, rng=random.Random(9)).sample() == guards.sample()[:5]


def _state(**entry) -> bytes:
    good = {"id": bytes(32), "added": 100, "expires": 100 + 40 * 86400, "unlisted": None}
    return pack_canonical({"v": 1, "guards": [{**good, **entry}]})


@pytest.mark.parametrize("data", [
    b"", b"\xff\x00garbage", pack_canonical({"v": 2, "guards": []}), pack_canonical({"v": 1}),
    pack_canonical({"v": 1, "guards": {}}), pack_canonical({"v": 1, "guards": [1]}),
    _state(id=b"short"), _state(id="text"), _state(added=True), _state(added=-1), _state(unlisted=1.5),
    _state(expires=50), _state(expires=100 + 400 * 86400), _state(extra=1),
    pack_canonical({"v": 1, "guards": [{"id": bytes(32), "added": 1, "expires": 2, "unlisted": None}] * 2}),
])
def test_a_corrupt_state_file_is_a_config_error_naming_it(data):
    with pytest.raises(ConfigError, match="/data/guards.state"):
        GuardManager.from_bytes(data, what="/data/guards.state", clock=Clock(), rng=random.Random())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_the_state_decoder_raises_only_config_errors(data):
    try:
        GuardManager.from_bytes(data, what="state", clock=Clock(), rng=random.Random())
    except ConfigError:
        pass


@pytest.mark.parametrize("params", [
    {"sample_size": 0}, {"sample_size": 201}, {"primary": 0}, {"primary": 21}, {"min_lifetime": 60.0},
    {"min_lifetime": 40 * DAY, "max_lifetime": 30 * DAY}, {"remove_unlisted_after": 1.0},
])
def test_bad_parameters_are_config_errors(params):
    with pytest.raises(ConfigError):
        GuardParams(**params)


def test_a_build_that_fails_at_its_guard_goes_on_through_the_next_guard(provider):
    """In an in-memory mesh: the first guard cannot be dialled; the build goes on at the sample's
    second guard (told through ``first_hop``), which is then the entry of the next circuits too."""
    async def main():
        net = MemoryNetwork(provider)
        for index in range(4):
            await net.add_node(exit=index == 3, stream_handler=echo_service if index == 3 else None)
        client = await net.add_node(accept_circuits=False)
        relays = [d for p, d in net.descriptors.items() if p != client.node.identity.peer_id]
        guards, selector = GuardManager(clock=Clock(), rng=random.Random(5)), PathSelector()
        guards.update(relays)
        first, second = guards.primary()
        exit_ = next(r for r in relays if r.capabilities.exit).peer_id
        if exit_ in (first, second):  # keep the only exit out of the guards
            guards = GuardManager(clock=Clock(), rng=random.Random(5), guards=[
                Guard(p, NOW, NOW + 40 * DAY) for p in guards.sample() if p != exit_])
            first, second = guards.primary()
        net.unreachable.add(first)
        reports = []

        def first_hop(peer, ok):
            reports.append((peer, ok))
            guards.first_hop(peer, ok)

        try:
            for _ in range(3):
                _, path = await build_around_failures(
                    client, lambda avoid, _: guards.select(selector, relays, exclude=avoid, hops=3),
                    selector, first_hop=first_hop)
                assert path[0].peer_id == second
            # Tried once as the entry, then it waits out its retry.
            assert reports == [(first, False), (second, True), (second, True), (second, True)]
        finally:
            await net.close()

    asyncio.run(main())
