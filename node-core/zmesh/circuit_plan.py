"""Which circuit a new stream goes on: dirtiness, isolation and a pool of pre-built circuits.

A circuit used for hours links everything its user did at its exit, and a circuit shared by two
applications links them to each other. The rules, after Tor's MaxCircuitDirtiness,
IsolateSOCKSAuth / IsolateDestAddr and preemptive circuits:
- a circuit becomes *dirty* when its first stream is attached; once it has been dirty for
  ``max_dirtiness`` seconds it takes no new stream. Streams already on it stay until they end, and
  it is closed once it has none left (``detach`` says so, ``expired_idle`` finds those left idle).
- every circuit in use carries one ``IsolationKey``; a stream goes only on a circuit with its key.
- ``pool_size`` *clean* circuits (no stream, no key yet) are kept built; a stream whose key has no
  usable circuit claims one and gives it its key, so it does not wait for a build. The pool is
  refilled ``refill_delay`` seconds after a claim, not at once: the build's handshakes would compete
  for the CPU with the stream that just claimed a circuit.
- a key's circuit ends at an exit no other key's live circuit uses, where the pool or the
  directory offers one (``exits_in_use``): a preference, not a rule, since small meshes have few exits.

Pure policy: no I/O, no asyncio; the clock is passed in, the adapter builds and destroys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .identity import PeerId

GENERAL, POOL = "general", "pool"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """The limits: ``max_dirtiness`` seconds of new streams per circuit, ``pool_size`` clean
    circuits kept ready (0: none), at most ``pool_builds`` pool builds at once."""

    max_dirtiness: float = 600.0
    pool_size: int = 2
    pool_builds: int = 2
    isolate_destination: bool = False
    refill_delay: float = 1.0  # after a claim, so the refill's handshakes do not slow the claiming stream

    def __post_init__(self) -> None:
        if isinstance(self.max_dirtiness, bool) or not isinstance(self.max_dirtiness, int | float) \
                or not 1 <= self.max_dirtiness <= 7 * 86400:
            raise ConfigError(f"max_circuit_dirtiness must be 1..604800 seconds, got {self.max_dirtiness!r}")
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int) or not 0 <= self.pool_size <= 32:
            raise ConfigError(f"circuit_pool must be 0..32 circuits, got {self.pool_size!r}")
        if isinstance(self.pool_builds, bool) or not isinstance(self.pool_builds, int) \
                or not 1 <= self.pool_builds <= 8:
            raise ConfigError(f"pool_builds must be 1..8, got {self.pool_builds!r}")
        if not isinstance(self.isolate_destination, bool):
            raise ConfigError("isolate_destination must be true or false")
        if isinstance(self.refill_delay, bool) or not isinstance(self.refill_delay, int | float) \
                or not 0 <= self.refill_delay <= 60:
            raise ConfigError(f"refill_delay must be 0..60 seconds, got {self.refill_delay!r}")

    def past_dirtiness(self, dirty_since: float | None, now: float) -> bool:
        """Whether a circuit dirty since ``dirty_since`` (None: still clean) may take no new stream."""
        return dirty_since is not None and now - dirty_since >= self.max_dirtiness


@dataclass(frozen=True, slots=True)
class IsolationKey:
    """Streams with equal keys may share a circuit. ``digest`` is a keyed hash of what isolates them
    (the SOCKS credentials, the destination), so no password is kept; ``description`` is the
    non-secret form shown on the control port."""

    digest: bytes
    description: str


@dataclass(slots=True)
class PlannedCircuit:
    """A built circuit as the plan sees it."""

    handle: int
    path: tuple[PeerId, ...]  # first hop first
    created: float
    allows_port: Callable[[int], bool]  # the exit's policy
    isolation: IsolationKey | None = None  # None: a clean pool circuit
    dirty_since: float | None = None
    streams: int = 0

    @property
    def purpose(self) -> str:
        return POOL if self.isolation is None else GENERAL


class CircuitPlan:
    """The circuits of one client and the streams on them, on ``clock``."""

    def __init__(self, policy: CircuitPolicy | None = None, *, clock: Callable[[], float],
                 secret: bytes | None = None) -> None:
        self.policy = policy or CircuitPolicy()
        self.clock = clock
        self._secret = secret or secrets.token_bytes(32)  # per run: descriptions do not link runs
        self._circuits: dict[int, PlannedCircuit] = {}
        self.pool_building = 0  # pool builds in flight, counted by the adapter
        self._refill_at = 0.0  # no pool build before this: a pool circuit was just claimed

    def key_for(self, credentials: tuple[bytes, bytes] | None, host: str) -> IsolationKey:
        """The key of a stream with these SOCKS credentials (None: no authentication) to ``host``
        (ignored unless ``isolate_destination``)."""
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        parts = ["socks-noauth" if credentials is None else "socks-auth"]
        for field in credentials or ():
            mac.update(len(field).to_bytes(2, "big") + field)
        if credentials is not None:
            parts[0] += ":" + mac.copy().hexdigest()[:8]
        mac.update(b"\xff")  # separates the credentials from the destination
        if self.policy.isolate_destination:
            destination = hmac.new(self._secret, b"dest:" + host.lower().encode(), hashlib.sha256)
            parts.append("dest:" + destination.hexdigest()[:8])
            mac.update(host.lower().encode())
        return IsolationKey(mac.digest(), " ".join(parts))

    # ---------------------------------------------------------------- circuits

    def add(self, handle: int, path: Sequence[PeerId], allows_port: Callable[[int], bool], *,
            isolation: IsolationKey | None = None) -> PlannedCircuit:
        """A circuit was built: for ``isolation``, or clean for the pool (None)."""
        circuit = PlannedCircuit(handle, tuple(path), self.clock(), allows_port, isolation)
        self._circuits[handle] = circuit
        return circuit

    def forget(self, handle: int) -> None:
        """The circuit is gone (destroyed, or closed by this client)."""
        self._circuits.pop(handle, None)

    def keep_only(self, alive: Collection[int]) -> None:
        """Forget every circuit the node no longer has."""
        for handle in [h for h in self._circuits if h not in alive]:
            del self._circuits[handle]

    def expired(self, circuit: PlannedCircuit) -> bool:
        """Whether the circuit has been dirty too long to take new streams."""
        return self.policy.past_dirtiness(circuit.dirty_since, self.clock())

    # ---------------------------------------------------------------- streams

    def attach(self, key: IsolationKey, port: int) -> PlannedCircuit | None:
        """Put a new stream to ``port`` on a circuit of ``key`` that may still take one, else on a
        clean pool circuit (which takes the key); None: a circuit must be built (then ``add`` it with
        the key and ``attach`` again)."""
        usable = [c for c in self._circuits.values()
                  if c.isolation == key and not self.expired(c) and c.allows_port(port)]
        if not usable:
            clean = [c for c in self._circuits.values() if c.isolation is None and c.allows_port(port)]
            busy = self.exits_in_use(key)
            usable = [c for c in clean if c.path[-1] not in busy] or clean  # a fresh exit if the pool has one
            if usable:
                self._refill_at = self.clock() + self.policy.refill_delay
        if not usable:
            return None
        circuit = max(usable, key=lambda c: c.created)  # the newest: it stays usable the longest
        circuit.isolation = key
        if circuit.dirty_since is None:
            circuit.dirty_since = self.clock()
        circuit.streams += 1
        return circuit

    def exits_in_use(self, key: IsolationKey) -> set[PeerId]:
        """The exits of other keys' circuits that still take streams: a new key's circuit should end
        elsewhere where the directory allows, so one exit does not see two identities side by side."""
        return {c.path[-1] for c in self._circuits.values()
                if c.isolation is not None and c.isolation != key and not self.expired(c)}

    def detach(self, handle: int) -> bool:
        """A stream on ``handle`` ended (or failed to open). True: close the circuit now, it is
        dirty past the limit and carries nothing any more."""
        circuit = self._circuits.get(handle)
        if circuit is None:
            return False
        circuit.streams = max(0, circuit.streams - 1)
        if circuit.streams == 0 and self.expired(circuit):
            del self._circuits[handle]
            return True
        return False

    def expired_idle(self) -> list[int]:
        """Circuits past the limit with no stream (their last one ended before the limit): forgotten
        here, for the adapter to close."""
        done = [c.handle for c in self._circuits.values() if c.streams == 0 and self.expired(c)]
        for handle in done:
            del self._circuits[handle]
        return done

    def next_deadline(self) -> float | None:
        """When ``expired_idle`` or ``pool_wanted`` next has something new to say."""
        deadlines = [c.dirty_since + self.policy.max_dirtiness for c in self._circuits.values()
                     if c.streams == 0 and c.dirty_since is not None]
        if self._refill_at > self.clock():
            deadlines.append(self._refill_at)
        return min(deadlines, default=None)

    # ---------------------------------------------------------------- pool and view

    def pool_wanted(self) -> int:
        """How many more pool builds to start now (none within ``refill_delay`` of a claim)."""
        if self.clock() < self._refill_at:
            return 0
        clean = sum(1 for c in self._circuits.values() if c.isolation is None)
        missing = self.policy.pool_size - clean - self.pool_building
        return max(0, min(missing, self.policy.pool_builds - self.pool_building))

    def circuits(self) -> list[PlannedCircuit]:
        return list(self._circuits.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """The circuits as the control port shows them (``docs/control.md``)."""
        now = self.clock()
        return [{"id": str(c.handle), "purpose": c.purpose, "path": [peer.text for peer in c.path],
                 "isolation": None if c.isolation is None else c.isolation.description,
                 "age_s": round(now - c.created, 3), "streams": c.streams}
                for c in sorted(self._circuits.values(), key=lambda c: c.created)]
