"""Building a circuit around hops that fail: the one retry policy of ``MeshVPN`` and ``zmesh client``.

A directory can list many relays that do not answer (stale, firewalled, or planted to waste
clients' time), so a fixed handful of attempts is not enough. Each failed build names the hop
that failed (``CircuitError.failed_peer``); that hop is left out of the next path, and building goes
on while the directory still offers a path, within ``max_attempts`` and a total ``deadline``. The
error at the end says which bound stopped it and what the last failure was.

Every outcome is fed to the ``PathSelector``, so the next path draws on what was measured: the hop
that failed, and for a built circuit each hop's latency (see ``_latencies_ms``). ``first_hop`` hears
whether each build got through its first hop, which is what entry guards count (``zmesh.guards``).

After the first failure the directory is refetched, once (``choose``'s ``refetch``): a stale list is
a likely cause. A hop that refused the build because its onion key is outdated (it rotated and the
grace period for the key our descriptor names is over, ``zmesh.onionkeys``) is not at fault before
that refetch: it is neither recorded nor avoided, and the next attempt gets its new descriptor.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from ..cells import DestroyReason
from ..descriptor import Descriptor
from ..errors import CircuitError, ConfigError
from ..identity import PeerId
from ..path import PathSelector
from .driver import NodeDriver

log = logging.getLogger(__name__)

# choose(excluded, refetch): a path without the excluded hops, from a refetched directory if refetch
ChoosePath = Callable[[frozenset[PeerId], bool], "list[Descriptor] | Awaitable[list[Descriptor]]"]


@dataclass(frozen=True, slots=True)
class BuildPolicy:
    """How long to keep trying: at most ``max_attempts`` builds, none started after ``deadline`` s
    (one build in flight is bounded by the node's own build timeout)."""

    max_attempts: int = 16
    deadline: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or not 1 <= self.max_attempts <= 1000:
            raise ConfigError(f"max_attempts must be 1..1000, got {self.max_attempts!r}")
        if not isinstance(self.deadline, int | float) or not 0 < self.deadline <= 3600:
            raise ConfigError(f"deadline must be more than 0 and at most 3600 seconds, got {self.deadline!r}")


async def build_around_failures(driver: NodeDriver, choose: ChoosePath, selector: PathSelector, *,
                                policy: BuildPolicy | None = None, pinned: Collection[PeerId] = (),
                                first_hop: Callable[[PeerId, bool], None] | None = None,
                                clock: Callable[[], float] = time.monotonic) -> tuple[int, list[Descriptor]]:
    """Build a circuit on ``choose(excluded, refetch)``'s path, excluding each hop that failed.

    ``pinned`` hops (a chosen entry, a destination) cannot be routed around: a failure there is
    final. ``choose`` raising ``CircuitError`` (no path without the excluded hops) ends the search.
    Outcomes and measured latencies are fed to ``selector``; ``first_hop(peer, ok)`` is told when a
    build failed at its first hop (``False``) or was built (``True``). Returns ``(circuit, path)``."""
    policy = policy or BuildPolicy()
    started = clock()
    avoid: set[PeerId] = set()
    failure: CircuitError | None = None
    refetched = False
    for _ in range(policy.max_attempts):
        if failure is not None and clock() - started >= policy.deadline:
            raise _gave_up(failure, f"the {policy.deadline:g} s build deadline passed", avoid)
        refetch = failure is not None and not refetched
        refetched |= refetch
        try:
            chosen = choose(frozenset(avoid), refetch)
            path = await chosen if inspect.isawaitable(chosen) else chosen
        except CircuitError:
            if failure is None:
                raise
            raise _gave_up(failure, "no path is left without the relays that failed", avoid) from None
        try:
            built = await driver.build(path)
        except CircuitError as exc:
            failure, peer = exc, exc.failed_peer
            if peer is None:
                log.info("circuit build failed (%s); retrying on another path", exc)
                continue
            if exc.reason is DestroyReason.ONION_KEY_OUTDATED and not refetched:
                log.info("circuit build failed at %s… (onion key outdated); refetching the directory", peer.short())
                continue
            selector.record(peer, ok=False)
            if first_hop is not None and peer == path[0].peer_id:
                first_hop(peer, False)
            if peer in pinned:
                raise
            avoid.add(peer)
            log.info("circuit build failed at %s… (%s); retrying without it", peer.short(), exc)
            continue
        for relay, latency_ms in zip(path, _latencies_ms(driver, path, built.build_seconds), strict=True):
            selector.record(relay.peer_id, ok=True, latency_ms=latency_ms)
        if first_hop is not None:
            first_hop(path[0].peer_id, True)
        return built.circuit, path
    assert failure is not None
    raise _gave_up(failure, f"{policy.max_attempts} attempts failed", avoid)


def _latencies_ms(driver: NodeDriver, path: list[Descriptor], build_seconds: float) -> list[float]:
    """A latency sample per hop of a built circuit. Building ``n`` hops takes ``n(n+1)/2`` link round
    trips (hop ``i``'s answer crosses ``i`` links), so the build time over that count is the mean
    round trip per link of this path; the first hop gets its own link's measured PING→PONG round
    trip instead, where the node has one. A slow relay thus drags down the paths it is on."""
    hops = len(path)
    per_link = 1000.0 * build_seconds / (hops * (hops + 1) / 2)
    first = driver.rtt_to(path[0].peer_id)
    return [per_link if first is None else 1000.0 * first] + [per_link] * (hops - 1)


def _gave_up(last: CircuitError, why: str, avoided: set[PeerId]) -> CircuitError:
    return CircuitError(f"could not build a circuit: {why} (avoided {len(avoided)} relay(s) that failed); "
                        f"last failure: {last}", last.reason, last.failed_peer)
