"""``zmesh.circuit_plan`` on a fake clock: dirtiness, isolation keys, the pool's accounting."""

from __future__ import annotations

import pytest

from zmesh.circuit_plan import CircuitPlan, CircuitPolicy
from zmesh.errors import ConfigError
from zmesh.identity import PeerId


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def peer(n: int) -> PeerId:
    return PeerId(bytes([n]) * 32)


def any_port(_port: int) -> bool:
    return True


def plan(**policy) -> tuple[CircuitPlan, Clock]:
    clock = Clock()
    return CircuitPlan(CircuitPolicy(**policy), clock=clock, secret=b"k" * 32), clock


def test_a_circuit_takes_new_streams_only_until_dirty_past_the_limit():
    circuits, clock = plan(max_dirtiness=600, pool_size=0)
    key = circuits.key_for((b"u", b"p"), "example.org")
    assert circuits.attach(key, 80) is None  # nothing built yet
    circuits.add(1, [peer(1), peer(2), peer(3)], any_port, isolation=key)
    clock.now += 10_000  # age before the first stream does not count: dirtiness starts at the first stream
    assert circuits.attach(key, 80).handle == 1
    clock.now += 599
    assert circuits.attach(key, 80).handle == 1
    clock.now += 1
    assert circuits.attach(key, 80) is None  # a new stream needs a new circuit
    assert circuits.detach(1) is False  # one stream still open: the circuit stays
    assert [c.handle for c in circuits.circuits()] == [1]
    assert circuits.detach(1) is True  # the last one: close it
    assert circuits.circuits() == []


def test_an_idle_dirty_circuit_is_closed_at_its_deadline():
    circuits, clock = plan(max_dirtiness=60, pool_size=0)
    key = circuits.key_for(None, "a")
    circuits.add(7, [peer(1), peer(2)], any_port, isolation=key)
    circuits.attach(key, 443)
    assert circuits.detach(7) is False  # ended before the limit: kept for the next stream
    assert circuits.next_deadline() == clock.now + 60
    assert circuits.expired_idle() == []
    clock.now += 60
    assert circuits.expired_idle() == [7] and circuits.circuits() == []


def test_isolation_keys_separate_credentials_and_optionally_destinations_and_hide_secrets():
    circuits, _ = plan()
    alice, bob = circuits.key_for((b"alice", b"pw1"), "a.org"), circuits.key_for((b"bob", b"pw2"), "a.org")
    assert alice != bob and alice == circuits.key_for((b"alice", b"pw1"), "b.org")
    assert circuits.key_for((b"ab", b"c"), "x") != circuits.key_for((b"a", b"bc"), "x")  # length-prefixed
    assert circuits.key_for(None, "x").description == "socks-noauth"
    assert alice.description.startswith("socks-auth:") and "alice" not in alice.description
    by_host, _ = plan(isolate_destination=True)
    assert by_host.key_for(None, "a.org") != by_host.key_for(None, "b.org")
    assert by_host.key_for(None, "A.org") == by_host.key_for(None, "a.org")
    assert "a.org" not in by_host.key_for(None, "a.org").description
    other_run = CircuitPlan(clock=Clock())  # a fresh secret: descriptions do not link runs
    assert other_run.key_for((b"alice", b"pw1"), "a.org").description != alice.description


def test_pool_circuits_are_claimed_by_the_first_stream_and_counted_for_refill():
    circuits, clock = plan(pool_size=2, pool_builds=2, refill_delay=1.0)
    assert circuits.pool_wanted() == 2
    circuits.pool_building = 2
    assert circuits.pool_wanted() == 0  # builds in flight count
    circuits.pool_building = 0
    circuits.add(1, [peer(1), peer(2), peer(3)], any_port)
    circuits.add(2, [peer(4), peer(5), peer(6)], lambda port: port == 443)
    assert circuits.pool_wanted() == 0
    key = circuits.key_for(None, "x")
    claimed = circuits.attach(key, 80)
    assert claimed.handle == 1 and claimed.isolation == key and claimed.purpose == "general"
    assert claimed.dirty_since is not None and claimed.streams == 1
    assert circuits.pool_wanted() == 0 and circuits.next_deadline() == clock.now + 1.0  # the claimer goes first
    clock.now += 1.0
    assert circuits.pool_wanted() == 1 and circuits.next_deadline() is None
    assert circuits.attach(circuits.key_for((b"u", b"p"), "x"), 80) is None  # the exit of 2 refuses port 80


def test_a_new_key_prefers_a_pool_circuit_whose_exit_no_other_key_uses():
    circuits, _ = plan(pool_size=2)
    circuits.add(1, [peer(1), peer(2), peer(9)], any_port)
    circuits.add(2, [peer(3), peer(4), peer(8)], any_port)
    first = circuits.attach(circuits.key_for((b"a", b""), "x"), 80)
    second_key = circuits.key_for((b"b", b""), "x")
    assert circuits.exits_in_use(second_key) == {first.path[-1]}
    assert circuits.attach(second_key, 80).path[-1] != first.path[-1]


def test_snapshot_is_the_control_port_schema():
    circuits, clock = plan()
    circuits.add(3, [peer(1), peer(2), peer(3)], any_port)
    clock.now += 1.5
    assert circuits.snapshot() == [{"id": "3", "purpose": "pool", "path": [peer(n).text for n in (1, 2, 3)],
                                    "isolation": None, "age_s": 1.5, "streams": 0}]


@pytest.mark.parametrize("bad", [{"max_dirtiness": 0}, {"max_dirtiness": True}, {"pool_size": -1},
                                 {"pool_size": 33}, {"pool_builds": 0}, {"isolate_destination": "yes"},
                                 {"refill_delay": -1}, {"refill_delay": 61}])
def test_policy_limits_are_validated(bad):
    with pytest.raises(ConfigError):
        CircuitPolicy(**bad)
