"""A relay's onion keys over time: the set it publishes now, the sets it replaced that clients may
still hold in a descriptor, and when to rotate (docs/protocol.md §4, "Onion key rotation").

Why rotate: the ML-KEM half of the circuit handshake encapsulates to the relay's onion key, so
whoever later steals that key's private half can decrypt the recorded handshakes made to it. A key
used for a day exposes a day of handshakes, not the relay's whole life. The Ed25519 identity never
rotates (it *is* the relay's name).

A rotation replaces the current set and *retires* the old one for ``grace`` seconds: clients that
fetched a descriptor naming the old key before the relay republished still build through it. A
CREATE names its key by ``B`` (the onion X25519 public key, bytes 32–64 of the payload, as ntor's
KEYID(B)), so the responder picks the set by that id; no trial decryption. After the grace period
the set is forgotten. Python cannot wipe memory: forgetting drops every reference this module holds
(the garbage collector frees the bytes later, unerased), and the persisted state is replaced
atomically by its owner, which is all erasure means here.

Pure: times are Unix seconds from an injected clock. Wall time, not monotonic, because the state
outlives the process: a relay restarted inside the grace period must still answer CREATEs for the
keys its last descriptors published. Keys come from the crypto provider passed to each call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .crypto.provider import KEY_SIZE, MLKEM768_SEED_SIZE, CryptoProvider
from .descriptor import CLOCK_SKEW, DEFAULT_LIFETIME
from .encoding import pack_canonical, unpack_canonical
from .errors import ConfigError, ProtocolError
from .identity import Identity, OnionKeys

DEFAULT_ONION_KEY_LIFETIME = 24 * 3600
MAX_ONION_KEY_LIFETIME = 7 * 24 * 3600
# A relay republishes right after rotating, so the last descriptor naming a retired key was signed
# at or before its retirement and is honoured for at most DEFAULT_LIFETIME after that; CLOCK_SKEW
# covers a client whose clock runs that much behind (descriptor.verify_descriptor allows it).
DEFAULT_ONION_KEY_GRACE = DEFAULT_LIFETIME + CLOCK_SKEW
MAX_RETIRED = 16  # grace may span at most this many lifetimes: retired sets held at once
_STATE_VERSION = 1
_MAX_STATE_SIZE = 4096


@dataclass(frozen=True, slots=True, repr=False)
class OnionKeySet:
    """One onion key pair set: X25519 ``b`` and the ML-KEM-768 seed, with their public halves.
    ``repr`` never shows the secrets."""

    x25519_private: bytes
    mlkem_seed: bytes
    public: OnionKeys

    @property
    def key_id(self) -> bytes:
        """What a CREATE names this set by: ``B``, its X25519 public key."""
        return self.public.x25519

    @classmethod
    def of(cls, identity: Identity) -> OnionKeySet:
        """The onion keys an identity was created with (a node nobody rotates keys for)."""
        return cls(identity.onion_x25519_private, identity.onion_mlkem_seed, identity.onion_keys)

    @classmethod
    async def generate(cls, provider: CryptoProvider) -> OnionKeySet:
        x_private, x_public = await provider.x25519_generate()
        seed, ek = await provider.mlkem768_generate()
        return cls(x_private, seed, OnionKeys(x_public, ek))

    @classmethod
    async def from_secrets(cls, provider: CryptoProvider, x25519_private: bytes, mlkem_seed: bytes) -> OnionKeySet:
        return cls(x25519_private, mlkem_seed, OnionKeys(await provider.x25519_public(x25519_private),
                                                          await provider.mlkem768_public(mlkem_seed)))

    def __repr__(self) -> str:
        return f"OnionKeySet({self.key_id[:4].hex()}…)"


def check_schedule(lifetime: float, grace: float) -> None:
    """``ConfigError`` unless ``lifetime`` and ``grace`` make a schedule this ring can keep."""
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) \
            or not 1 <= lifetime <= MAX_ONION_KEY_LIFETIME:
        raise ConfigError(f"onion_key_lifetime must be 1..{MAX_ONION_KEY_LIFETIME} seconds, got {lifetime!r}")
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= MAX_RETIRED * lifetime:
        raise ConfigError(f"onion_key_grace must be 0..{MAX_RETIRED} × onion_key_lifetime "
                          f"(= {MAX_RETIRED * lifetime:g} s), got {grace!r}; set both when shortening the lifetime")


class OnionKeyRing:
    """The current onion key set and the retired ones still inside their grace period.

    ``since`` is when the current set took over; it is replaced at ``since + lifetime``. A retired
    set is accepted until ``retired_at + grace``. ``handle_timer`` (at ``next_deadline()``) does both;
    ``find`` applies the grace bound itself, so a timer that runs late never extends it."""

    def __init__(self, current: OnionKeySet, *, since: float, clock: Callable[[], float],
                 lifetime: float = DEFAULT_ONION_KEY_LIFETIME, grace: float = DEFAULT_ONION_KEY_GRACE,
                 retired: tuple[tuple[OnionKeySet, float], ...] = ()) -> None:
        check_schedule(lifetime, grace)
        self.clock, self.lifetime, self.grace = clock, lifetime, grace
        self._current, self._since = current, since
        self._retired = list(retired)[-MAX_RETIRED:]  # (set, retired_at), oldest first

    @classmethod
    async def generate(cls, provider: CryptoProvider, clock: Callable[[], float], *,
                       lifetime: float = DEFAULT_ONION_KEY_LIFETIME,
                       grace: float = DEFAULT_ONION_KEY_GRACE) -> OnionKeyRing:
        return cls(await OnionKeySet.generate(provider), since=clock(), clock=clock, lifetime=lifetime, grace=grace)

    @property
    def current(self) -> OnionKeySet:
        """The set to publish."""
        return self._current

    def retired(self) -> list[OnionKeySet]:
        """Retired sets still accepted now, oldest first."""
        now = self.clock()
        return [keys for keys, at in self._retired if now < at + self.grace]

    def find(self, key_id: bytes) -> OnionKeySet | None:
        """The set a CREATE naming ``key_id`` was made for, or None: unknown, or retired longer
        than ``grace`` ago (the client must refetch the relay's descriptor)."""
        if key_id == self._current.key_id:
            return self._current
        return next((keys for keys in self.retired() if keys.key_id == key_id), None)

    def next_deadline(self) -> float:
        """When ``handle_timer`` has work: the next rotation or the end of the oldest grace period."""
        return min([self._since + self.lifetime, *(at + self.grace for _, at in self._retired)])

    async def handle_timer(self, provider: CryptoProvider) -> bool:
        """Forget the retired sets past their grace; rotate if the current set is due. Returns
        whether it rotated (then the owner persists the state and republishes its descriptor)."""
        now = self.clock()
        self._retired = [(keys, at) for keys, at in self._retired if now < at + self.grace]
        if now < self._since + self.lifetime:
            return False
        fresh = await OnionKeySet.generate(provider)
        self._retired = [*self._retired, (self._current, now)][-MAX_RETIRED:] if self.grace > 0 else []
        self._current, self._since = fresh, now
        return True

    # ------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """Secret serialisation (store it with mode 0600): the current set and the retired ones
        still in their grace period, with their times."""
        now = self.clock()
        return pack_canonical({
            "v": _STATE_VERSION,
            "current": {"x25519": self._current.x25519_private, "mlkem768_seed": self._current.mlkem_seed,
                        "at": float(self._since)},
            "retired": [{"x25519": keys.x25519_private, "mlkem768_seed": keys.mlkem_seed, "at": float(at)}
                        for keys, at in self._retired if now < at + self.grace],
        })

    @classmethod
    async def from_bytes(cls, provider: CryptoProvider, data: bytes, clock: Callable[[], float], *,
                         lifetime: float = DEFAULT_ONION_KEY_LIFETIME,
                         grace: float = DEFAULT_ONION_KEY_GRACE) -> OnionKeyRing:
        """Read what ``to_bytes`` wrote; anything else is a ``ConfigError`` that says what to do."""
        try:
            fields = unpack_canonical(data, max_size=_MAX_STATE_SIZE, what="onion key state")
        except ProtocolError as exc:
            raise ConfigError(f"{exc}; move the file away to start with fresh onion keys") from exc
        if not isinstance(fields, dict) or set(fields) != {"v", "current", "retired"} \
                or fields["v"] != _STATE_VERSION or not isinstance(fields["retired"], list) \
                or len(fields["retired"]) > MAX_RETIRED:
            raise ConfigError("onion key state has an unknown version or fields; move it away to start afresh")
        entries = [_entry(item) for item in (fields["current"], *fields["retired"])]
        sets = [(await OnionKeySet.from_secrets(provider, x_priv, seed), at) for x_priv, seed, at in entries]
        (current, since), retired = sets[0], tuple(sets[1:])
        return cls(current, since=since, clock=clock, lifetime=lifetime, grace=grace, retired=retired)


def _entry(item: object) -> tuple[bytes, bytes, float]:
    if not isinstance(item, dict) or set(item) != {"x25519", "mlkem768_seed", "at"}:
        raise ConfigError("onion key state has a malformed key entry; move it away to start afresh")
    x_priv, seed, at = item["x25519"], item["mlkem768_seed"], item["at"]
    if not isinstance(x_priv, bytes) or len(x_priv) != KEY_SIZE or not isinstance(seed, bytes) \
            or len(seed) != MLKEM768_SEED_SIZE or not isinstance(at, float) or not math.isfinite(at):
        raise ConfigError("onion key state has keys of the wrong size or a bad time; move it away to start afresh")
    return x_priv, seed, at
