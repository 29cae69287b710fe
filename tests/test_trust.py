"""Issue 20 item 4: measured trust (RTT, build and stream success, uptime), decaying, persisted, and
steering path selection; a relay that keeps failing builds is benched for a while."""

import asyncio
import json
import logging
import os
import random

import pytest

from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.errors import ConfigError, ProtocolError
from zmesh.identity import Identity, PeerId
from zmesh.path import PathSelector
from zmesh.trust import TrustPolicy, TrustStore
from zmesh_relay.trust_file import TRUST_FILE, TrustFile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def relays(provider):
    async def make():
        out = []
        for index in range(9):
            identity = await Identity.generate(provider)
            out.append(await sign_descriptor(
                provider, identity, now=1_800_000_000, addresses={"ws": (f"ws://10.{index}.0.1:9000",)},
                capabilities=Capabilities(exit=index < 3, bandwidth=1000),
                exit_ports=((1, 65535),) if index < 3 else ()))
        return out
    return asyncio.run(make())


def test_a_stranger_is_neutral_and_outcomes_move_its_reliability(relays):
    trust = TrustStore(Clock())
    peer = relays[0].peer_id
    assert trust.reliability(peer) == 0.5 and trust.rtt_ms(peer) is None
    for _ in range(10):
        trust.record_build(peer, ok=True)
        trust.record_stream(peer, ok=True)
    good = trust.reliability(peer)
    for _ in range(10):
        trust.record_stream(relays[1].peer_id, ok=False)
    assert good > 0.6 > 0.4 > trust.reliability(relays[1].peer_id)


def test_outcomes_decay_with_the_half_life(relays):
    clock = Clock()
    trust = TrustStore(clock, TrustPolicy(half_life=100.0, bench_after=1000))
    peer = relays[0].peer_id
    for _ in range(30):
        trust.record_build(peer, ok=False)
    fresh = trust.reliability(peer)
    clock.now += 1000  # ten half-lives: the failures count about 3 % of what they did
    trust.observe_listing([])
    recovered = trust.reliability(peer)
    assert fresh < recovered and abs(recovered - 0.5) < 0.05


def test_uptime_is_the_share_of_observations_listing_the_relay(relays):
    clock = Clock()
    trust = TrustStore(clock)
    steady, flapping = relays[0].peer_id, relays[1].peer_id
    for step in range(100):
        trust.observe_listing([steady] + ([flapping] if step % 2 else []))
        clock.now += 60
    assert trust.records[steady].uptime(clock.now) > 0.95
    assert trust.records[flapping].uptime(clock.now) < 0.1  # never listed twice in a row
    assert trust.reliability(steady) > trust.reliability(flapping)


def test_time_the_client_was_off_is_not_time_the_relay_was_unlisted(relays):
    """Uptime is the share of this client's observations listing the relay: a week with the client
    off holds no observation, so it must not count as a week the relay was missing."""
    clock = Clock()
    trust = TrustStore(clock)
    steady = relays[0].peer_id
    for _ in range(61):
        trust.observe_listing([steady])
        clock.now += 60
    before = trust.records[steady].uptime(clock.now)
    restarted_clock = Clock()
    restarted = TrustStore(restarted_clock)
    restarted.load_json(json.loads(json.dumps(trust.to_json())), offline=7 * 86400)
    assert restarted.records[steady].uptime(restarted_clock.now) > 0.9 * before, before
    restarted.observe_listing([steady])
    restarted_clock.now += 60
    restarted.observe_listing([steady])
    assert restarted.records[steady].uptime(restarted_clock.now) > 0.9 * before


def test_repeated_build_failures_bench_a_relay_for_a_doubling_while(relays):
    clock = Clock()
    trust = TrustStore(clock, TrustPolicy(bench_after=3, bench_for=60, bench_max=200))
    peer = relays[0].peer_id
    trust.record_build(peer, ok=False)
    trust.record_build(peer, ok=False)
    assert not trust.benched(peer)
    trust.record_build(peer, ok=False)
    assert trust.benched(peer)
    clock.now += 61
    assert not trust.benched(peer)
    for _ in range(3):
        trust.record_build(peer, ok=False)
    clock.now += 119
    assert trust.benched(peer)  # the second benching lasts 120 s
    clock.now += 2
    assert not trust.benched(peer)
    for _ in range(6):
        trust.record_build(peer, ok=False)
    clock.now += 199
    assert trust.benched(peer)
    clock.now += 2
    assert not trust.benched(peer)  # capped at bench_max = 200 s, not 480


def test_a_benched_relay_is_left_out_of_the_draw_unless_nothing_else_is_left(relays):
    clock = Clock()
    selector = PathSelector(trust=TrustStore(clock, TrustPolicy(bench_after=1)))
    benched = relays[4].peer_id
    selector.record(benched, ok=False)
    rng = random.Random(7)
    assert all(benched not in {hop.peer_id for hop in selector.select(relays, hops=3, rng=rng)} for _ in range(300))
    only_exits = relays[:3]
    for exit_ in only_exits:
        selector.record(exit_.peer_id, ok=False)
    assert selector.select(relays, hops=3, rng=rng)[-1] in only_exits  # a benched exit beats no circuit


def _share_of_paths_through(flaky_failure_rate: float, relays, flaky) -> float:
    """Simulate 3000 builds on a fake clock; a build through ``flaky`` fails at it with the given
    probability (fixed seeds). Returns the share of the last 2000 paths that used ``flaky``."""
    clock = Clock()
    selector = PathSelector(trust=TrustStore(clock))
    draw, outcome = random.Random(11), random.Random(12)
    used = 0
    for index in range(3000):
        clock.now += 5
        path = selector.select(relays, hops=3, rng=draw)
        through = flaky in {hop.peer_id for hop in path}
        if through and outcome.random() < flaky_failure_rate:
            selector.record(flaky, ok=False, latency_ms=20)
        else:
            for hop in path:
                selector.record(hop.peer_id, ok=True, latency_ms=20)
        used += through and index >= 1000
    return used / 2000


def test_a_relay_failing_half_its_builds_is_chosen_measurably_less_often(relays):
    """Issue 20's done-when: same directory, same seeds; only the middle relay's failure rate differs."""
    flaky = relays[5].peer_id
    honest = _share_of_paths_through(0.0, relays, flaky)
    failing = _share_of_paths_through(0.5, relays, flaky)
    assert honest > 0.2  # it is a real candidate when it behaves
    assert failing < 0.6 * honest, (honest, failing)


def test_the_trust_file_survives_a_restart_and_decays_over_the_time_offline(tmp_path, relays, monkeypatch):
    clock = Clock()
    peer = relays[0].peer_id
    store = TrustStore(clock)
    saved = TrustFile(str(tmp_path), store)
    for _ in range(20):
        store.record_build(peer, ok=False)
    store.record_rtt(peer, 42.0)
    saved.save()
    path = tmp_path / TRUST_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    before = store.reliability(peer)
    restarted = TrustStore(Clock())
    TrustFile(str(tmp_path), restarted)
    assert restarted.rtt_ms(peer) == 42.0 and abs(restarted.reliability(peer) - before) < 1e-6
    data = json.loads(path.read_text())
    data["saved_at"] -= 10 * TrustPolicy().half_life  # as if the client had been off for 60 hours
    path.write_text(json.dumps(data))
    long_off = TrustStore(Clock())
    TrustFile(str(tmp_path), long_off)
    assert abs(long_off.reliability(peer) - 0.5) < abs(before - 0.5) / 4


@pytest.mark.parametrize("content", ["not json", "[]", '{"format": 1, "saved_at": 0, "relays": {"x": {}}}',
                                     '{"format": 1, "saved_at": 0, "relays": {"%s": {"age": -1, "rtt_ms": null, '
                                     '"builds": [0, 0], "streams": [0, 0], "first_seen_age": null, '
                                     '"listed_seconds": 0, "benched_for": 0, "benchings": 0}}}',
                                     # integers beyond a float's range: math.isfinite raised OverflowError
                                     '{"format": 1, "saved_at": 0, "relays": {"%s": {"age": 1' + '0' * 400 + ', '
                                     '"rtt_ms": null, "builds": [0, 0], "streams": [0, 0], "first_seen_age": null, '
                                     '"listed_seconds": 0, "benched_for": 0, "benchings": 0}}}',
                                     '{"format": 1, "saved_at": 1' + '0' * 400 + ', "relays": {}}'])
def test_a_malformed_trust_file_is_a_warning_and_the_scores_start_neutral(tmp_path, relays, content, caplog):
    (tmp_path / TRUST_FILE).write_text(content.replace("%s", relays[0].peer_id.text))
    store = TrustStore(Clock())
    with caplog.at_level(logging.WARNING):
        TrustFile(str(tmp_path), store)
    assert store.records == {} and "ignoring trust file" in caplog.text


def test_load_json_refuses_garbage_with_our_error_and_keeps_what_it_had(relays):
    store = TrustStore(Clock())
    store.record_build(relays[0].peer_id, ok=True)
    kept = dict(store.records)
    for bad in (None, {"format": 2, "relays": {}}, {"format": 1, "relays": {"nope": {}}}):
        with pytest.raises(ProtocolError):
            store.load_json(bad)
    assert store.records == kept


def test_policy_limits_are_validated():
    for bad in ({"half_life": 0}, {"bench_after": 0}, {"bench_for": 10, "bench_max": 5}, {"latency_smoothing": 0}):
        with pytest.raises(ConfigError):
            TrustPolicy(**bad)


def test_the_table_is_bounded(relays):
    clock = Clock()
    trust = TrustStore(clock, TrustPolicy(max_relays=4))
    for relay in relays:
        clock.now += 1
        trust.record_build(relay.peer_id, ok=True)
    assert len(trust.records) == 4 and relays[-1].peer_id in trust.records


def test_a_full_table_forgets_the_relays_unseen_longest_a_tenth_at_a_time():
    clock = Clock()
    trust = TrustStore(clock, TrustPolicy(max_relays=20))
    peers = [PeerId(bytes([n]) * 32) for n in range(21)]
    for peer in peers:
        clock.now += 1
        trust.record_build(peer, ok=True)
    assert set(trust.records) == set(peers[2:])  # the two oldest made room for the newcomer
