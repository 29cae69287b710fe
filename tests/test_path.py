"""Path selection: weights validated, no peer twice, exits by port and country."""

import asyncio
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.descriptor import Capabilities, sign_descriptor
from zmesh.errors import CircuitError, ConfigError
from zmesh.identity import Identity
from zmesh.path import PathSelector, PathWeights


@pytest.fixture(scope="module")
def relays(provider):
    async def make():
        out = []
        for index in range(12):
            identity = await Identity.generate(provider)
            exit_ = index % 3 == 0
            out.append(await sign_descriptor(
                provider, identity, now=1_800_000_000,
                addresses={"ws": (f"ws://10.{index}.0.1:9000",)},
                capabilities=Capabilities(exit=exit_, country=("DE" if index % 2 else "NL"),
                                          bandwidth=1000 * (index + 1)),
                exit_ports=((80, 80), (443, 443)) if index == 0 else ((1, 65535),) if exit_ else ()))
        return out
    return asyncio.run(make())


@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.3), (0.4, 0.3, 0.2), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5),
                                     (float("inf"), 0.0, 0.0)])
def test_weights_must_sum_to_one_and_be_non_negative(weights):
    with pytest.raises(ConfigError, match="sum to 1"):
        PathWeights(*weights)


def test_default_weights_keep_the_design_ratio_without_a_diversity_share():
    """Diversity is a hard rule now, not 10 % of the score: the other three keep their 4 : 3 : 2."""
    w = PathWeights()
    assert math.isclose(w.latency / w.bandwidth, 2) and math.isclose(w.reliability / w.bandwidth, 1.5)
    assert math.isclose(w.latency + w.reliability + w.bandwidth, 1)


@settings(max_examples=200, deadline=None)
@given(hops=st.integers(min_value=2, max_value=8), seed=st.integers())
def test_never_the_same_peer_twice_and_ends_at_an_exit(relays, hops, seed):
    path = PathSelector().select(relays, hops=hops, rng=random.Random(seed))
    assert len(path) == hops and len({r.peer_id for r in path}) == hops
    assert path[-1].capabilities.exit


@pytest.mark.parametrize("hops", [0, 1, 9, 100])
def test_hop_count_out_of_range_is_config_error(relays, hops):
    with pytest.raises(ConfigError):
        PathSelector().select(relays, hops=hops)


def test_exit_is_chosen_by_port_and_country(relays):
    selector = PathSelector()
    for seed in range(50):
        path = selector.select(relays, port=22, country="nl", rng=random.Random(seed))
        assert path[-1].allows_port(22) and path[-1].capabilities.country == "NL"
        assert path[-1].peer_id != relays[0].peer_id  # relay 0 only exits to 80/443


def test_too_few_relays_is_a_circuit_error(relays):
    with pytest.raises(CircuitError):
        PathSelector().select(relays, country="FR")
    with pytest.raises(CircuitError):
        PathSelector().select(relays[:2], hops=3)


def test_scores_steer_the_draw(relays):
    selector = PathSelector()
    good, bad = relays[1], relays[2]
    for _ in range(20):
        selector.record(good.peer_id, ok=True, latency_ms=5)
        selector.record(bad.peer_id, ok=False, latency_ms=900)
    assert selector.score(good, 12000) > selector.score(bad, 12000)
    rng = random.Random(1)
    picks = [selector.select(relays, hops=2, rng=rng)[0].peer_id for _ in range(400)]
    assert picks.count(good.peer_id) > picks.count(bad.peer_id)


def test_destination_path_ends_at_the_destination(relays):
    path = PathSelector().select(relays, hops=3, destination=relays[5], rng=random.Random(3))
    assert path[-1] is relays[5] and relays[5].peer_id not in [r.peer_id for r in path[:-1]]


def test_nodes_without_a_listener_are_only_reached_through_their_relay(provider, relays):
    async def make_tab():
        identity = await Identity.generate(provider)
        return await sign_descriptor(provider, identity, now=1_800_000_000,
                                     addresses={"via": (relays[4].peer_id.text,)})
    tab = asyncio.run(make_tab())
    everyone = relays + [tab]
    for seed in range(100):
        assert tab not in PathSelector().select(everyone, hops=3, rng=random.Random(seed))
    path = PathSelector().select(everyone, hops=3, destination=tab, rng=random.Random(5))
    assert path[-1] is tab and path[-2] is relays[4] and len({r.peer_id for r in path}) == 3


@pytest.mark.parametrize("hops", [2, 3, 5])
def test_a_chosen_entry_is_the_first_hop_and_nowhere_else(relays, hops):
    entry = relays[7]
    for seed in range(30):
        path = PathSelector().select(relays, hops=hops, entry=entry, rng=random.Random(seed))
        assert path[0] is entry and len(path) == hops and len({r.peer_id for r in path}) == hops
        assert path[-1].capabilities.exit
    with pytest.raises(ConfigError, match="last hop"):
        PathSelector().select(relays, hops=3, entry=relays[3], destination=relays[3])
