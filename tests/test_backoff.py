"""Reconnect backoff (zmesh.backoff): jittered growth, and only a session that stayed up resets it."""

from zmesh.backoff import Backoff
from zmesh.testing.wire import FakeClock


def bounds(backoff: Backoff, count: int) -> list[float]:
    return [backoff.delay() for _ in range(count)]


def test_delays_double_up_to_the_cap_with_full_jitter():
    backoff = Backoff(first=0.5, cap=4.0, rng=lambda: 1.0)
    assert bounds(backoff, 5) == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert Backoff(rng=lambda: 0.25).delay() == 0.125


def test_a_server_that_accepts_and_closes_at_once_does_not_reset_the_growth():
    clock = FakeClock()
    backoff = Backoff(first=0.5, cap=4.0, rng=lambda: 1.0, clock=clock)
    seen = []
    for _ in range(5):
        seen.append(backoff.delay())
        backoff.opened()
        clock.now += 0.1  # the session closes almost at once
        backoff.closed()
    assert seen == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_session_that_stayed_up_starts_the_growth_over():
    clock = FakeClock()
    backoff = Backoff(first=0.5, cap=4.0, rng=lambda: 1.0, clock=clock)
    bounds(backoff, 3)
    backoff.opened()
    clock.now += 4.0
    backoff.closed()
    assert backoff.delay() == 0.5
