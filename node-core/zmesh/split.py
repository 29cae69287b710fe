"""Split messages: Shamir secret sharing over GF(2^8), shares with an expiry, and their inbox.

A message is cut into ``n`` shares, any ``k`` of which rebuild it and fewer reveal nothing about
it (information-theoretically: every ``k - 1`` shares are uniformly distributed whatever the
message). Why Shamir rather than an erasure code plus encryption (Krawczyk's "secret sharing made
short", ``n/k`` times the bytes): the point of sending over disjoint paths is that a relay, or a
coalition of fewer than ``k`` paths, learns nothing, and with Krawczyk that holds only as long as the
cipher does and its key is itself Shamir-shared; Shamir needs no key and no cipher. It costs ``n``
times the message in bytes, which for messages of at most ``MAX_MESSAGE_SIZE`` is affordable.

Integrity: what is shared is ``r ‖ data`` with ``r`` 32 random bytes, and every share carries the
commitment ``SHA-256(r ‖ data)``. Fewer than ``k`` shares leave ``r`` uniformly unknown, so the
commitment reveals nothing of ``data``; after combining ``k`` shares the receiver checks it, so a
forged or corrupted share is caught, and with more than ``k`` shares other subsets are tried (a
bounded number) to route around a bad one.

Expiry: each share names the sender's Unix time plus the ttl. The inbox drops a share at or past
its expiry, never combines after it, and remembers a delivered message id until its expiry, so
a replayed share never delivers twice. Everything a peer can fill is bounded; refusals are
``ShareRefused`` with a ``Refusal`` code (the receiver sends the code back to the sender).

The arithmetic is ``fec.gf256``'s: a share is ``Σ cⱼ·xʲ`` over whole byte strings (one
``bytes.translate`` per term, sums as big-int XOR), so a 256 KiB message splits and combines
in milliseconds even in pure Python.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import combinations

from .encoding import pack_canonical, unpack_canonical
from .errors import ConfigError, CryptoError, ProtocolError
from .fec.gf256 import EXP, LOG, SymbolKernel, inv, mul

VERSION = 1
MAX_MESSAGE_SIZE = 1 << 20  # as ``aio.api.MAX_MESSAGE_SIZE``
MAX_SHARES = 16
DEFAULT_TTL = 300
MAX_TTL = 3600
MAX_CLOCK_SKEW = 300  # a share may expire this much later than MAX_TTL from the receiver's now
ID_SIZE = 16
NONCE_SIZE = 32
COMMITMENT_SIZE = 32
MAX_SHARE_SIZE = NONCE_SIZE + MAX_MESSAGE_SIZE + 256  # the encoded share, with its header fields


class Refusal(IntEnum):
    """Why the inbox refused a share: the code the receiver sends back (0 is "stored")."""

    EXPIRED = 1  # at or past its expiry (or expiring absurdly far ahead)
    DELIVERED = 2  # its message was already delivered: a replay
    DUPLICATE = 3  # this index of this message is already held
    MISMATCH = 4  # k, n, expiry, length or commitment differ from the message's other shares
    FULL = 5  # the inbox holds as many partial messages or bytes as it may
    INTEGRITY = 6  # every combination of the shares failed the commitment
    MALFORMED = 7  # not a share at all


class ShareRefused(ProtocolError):
    """A share the inbox would not take; ``refusal`` says why."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class Share:
    """One share of a message: ``index`` is its x coordinate (1..n), ``data`` its y values."""

    message_id: bytes
    k: int
    n: int
    index: int
    expiry: int  # the sender's Unix time + ttl
    commitment: bytes
    data: bytes

    def __post_init__(self) -> None:
        if len(self.message_id) != ID_SIZE or len(self.commitment) != COMMITMENT_SIZE:
            raise ProtocolError("a share's id or commitment has the wrong size")
        if not 2 <= self.k <= self.n <= MAX_SHARES or not 1 <= self.index <= self.n:
            raise ProtocolError(f"a share needs 2 <= k <= n <= {MAX_SHARES} and 1 <= index <= n")
        if not NONCE_SIZE <= len(self.data) <= NONCE_SIZE + MAX_MESSAGE_SIZE:
            raise ProtocolError("a share's data is shorter than the nonce or longer than a message")
        if not 0 <= self.expiry < 1 << 40:
            raise ProtocolError("a share's expiry is out of range")

    def encode(self) -> bytes:
        return pack_canonical({"v": VERSION, "id": self.message_id, "k": self.k, "n": self.n, "i": self.index,
                               "exp": self.expiry, "c": self.commitment, "y": self.data})


_FIELDS = {"v": int, "id": bytes, "k": int, "n": int, "i": int, "exp": int, "c": bytes, "y": bytes}


def decode_share(raw: bytes) -> Share:
    """A share from untrusted bytes; ``ProtocolError`` for anything but a canonical, well-formed one."""
    value = unpack_canonical(raw, max_size=MAX_SHARE_SIZE, what="a split-message share")
    if not isinstance(value, dict) or set(value) != set(_FIELDS) or not all(
            type(value[key]) is kind for key, kind in _FIELDS.items()):
        raise ProtocolError("a split-message share must be a map of exactly v, id, k, n, i, exp, c, y")
    if value["v"] != VERSION:
        raise ProtocolError(f"split-message share version {value['v']} is not {VERSION}")
    return Share(value["id"], value["k"], value["n"], value["i"], value["exp"], value["c"], value["y"])


def _power(x: int, exponent: int) -> int:
    return 1 if exponent == 0 else EXP[(LOG[x] * exponent) % 255]


def shamir_split(secret: bytes, k: int, n: int, random_bytes: Callable[[int], bytes]) -> list[bytes]:
    """Share ``i`` (for x = 1..n) is ``f(x)`` byte-wise, ``f`` of degree ``k - 1`` with constant term
    the secret and the other coefficients from ``random_bytes``."""
    kernel = SymbolKernel(len(secret))
    terms = [kernel.to_int(secret)] + [kernel.to_int(random_bytes(len(secret))) for _ in range(k - 1)]
    return [kernel.to_bytes(kernel.combine(terms, bytes(_power(x, j) for j in range(k)))) for x in range(1, n + 1)]


def shamir_combine(points: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret from ``k`` distinct points ``(x, f(x))``: Lagrange interpolation at 0, where
    in characteristic 2 the weight of ``xᵢ`` is ``Π xⱼ / (xⱼ + xᵢ)`` over ``j ≠ i``."""
    kernel = SymbolKernel(len(points[0][1]))
    weights = bytearray()
    for x_i, _ in points:
        weight = 1
        for x_j, _ in points:
            if x_j != x_i:
                weight = mul(weight, mul(x_j, inv(x_j ^ x_i)))
        weights.append(weight)
    return kernel.to_bytes(kernel.combine([kernel.to_int(y) for _, y in points], bytes(weights)))


def check_parameters(k: int, n: int, ttl: float) -> None:
    if not isinstance(k, int) or not isinstance(n, int) or not 2 <= k <= n <= MAX_SHARES:
        raise ConfigError(f"split needs integers 2 <= k <= n <= {MAX_SHARES}, got k={k!r} n={n!r}")
    if not isinstance(ttl, int | float) or not 1 <= ttl <= MAX_TTL:
        raise ConfigError(f"ttl must be 1..{MAX_TTL} seconds, got {ttl!r}")


def split(data: bytes, *, k: int, n: int, ttl: float = DEFAULT_TTL, now: float,
          random_bytes: Callable[[int], bytes] = os.urandom) -> list[Share]:
    """``n`` shares of ``data``, any ``k`` of which rebuild it until ``now + ttl`` (Unix time)."""
    check_parameters(k, n, ttl)
    if len(data) > MAX_MESSAGE_SIZE:
        raise ConfigError(f"a split message is at most {MAX_MESSAGE_SIZE} bytes, got {len(data)}")
    secret = random_bytes(NONCE_SIZE) + bytes(data)
    commitment = hashlib.sha256(secret).digest()
    message_id, expiry = random_bytes(ID_SIZE), int(now + ttl)
    return [Share(message_id, k, n, index, expiry, commitment, y)
            for index, y in enumerate(shamir_split(secret, k, n, random_bytes), start=1)]


def combine(shares: Sequence[Share]) -> bytes:
    """The message from ``k`` shares of it; ``CryptoError`` if the result fails the commitment."""
    secret = shamir_combine([(s.index, s.data) for s in shares])
    if hashlib.sha256(secret).digest() != shares[0].commitment:
        raise CryptoError("the combined shares do not match the message's commitment")
    return secret[NONCE_SIZE:]


@dataclass(slots=True)
class _Partial:
    first: Share  # k, n, expiry, commitment and length every later share must match
    shares: dict[int, Share] = field(default_factory=dict)
    tries: int = 0

    def matches(self, share: Share) -> bool:
        f = self.first
        return (f.k, f.n, f.expiry, f.commitment, len(f.data)) == (
            share.k, share.n, share.expiry, share.commitment, len(share.data))


@dataclass(slots=True)
class SplitInbox:
    """Shares waiting for their message's ``k``th, on ``clock`` (Unix time, injected).

    ``max_messages`` partial messages and ``max_bytes`` of share data at most; ``max_delivered``
    delivered ids remembered (a new message is refused rather than an id forgotten early, so a
    replay can never deliver twice); ``max_tries`` combinations tried per message."""

    clock: Callable[[], float]
    max_messages: int = 64
    max_bytes: int = 16 << 20
    max_delivered: int = 65_536
    max_tries: int = 16
    _partials: dict[bytes, _Partial] = field(default_factory=dict)
    _delivered: set[bytes] = field(default_factory=set)
    _delivered_expiry: list[tuple[int, bytes]] = field(default_factory=list)  # a heap: the next to forget first
    _bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("max_messages", "max_bytes", "max_delivered", "max_tries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"SplitInbox {name} must be a positive integer, got {value!r}")

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def pending_messages(self) -> int:
        return len(self._partials)

    def add(self, share: Share) -> bytes | None:
        """Take ``share``; the message once it combines, else None. ``ShareRefused`` (and no
        change) for a share that is expired, replayed, inconsistent or over a bound."""
        now = self.clock()
        self._expire(now)
        if share.expiry <= now:
            raise ShareRefused(Refusal.EXPIRED, "the share has expired")
        if share.expiry > now + MAX_TTL + MAX_CLOCK_SKEW:
            raise ShareRefused(Refusal.EXPIRED, f"the share expires more than {MAX_TTL} s from now")
        if share.message_id in self._delivered:
            raise ShareRefused(Refusal.DELIVERED, "the share's message was already delivered")
        partial = self._partials.get(share.message_id)
        if partial is None:
            if len(self._partials) >= self.max_messages or len(self._delivered) >= self.max_delivered:
                raise ShareRefused(Refusal.FULL, "the inbox holds as many split messages as it may")
            partial = _Partial(share)
        elif not partial.matches(share):
            raise ShareRefused(Refusal.MISMATCH, "the share disagrees with its message's other shares")
        elif share.index in partial.shares:
            raise ShareRefused(Refusal.DUPLICATE, "this share of the message is already held")
        if self._bytes + len(share.data) > self.max_bytes:
            raise ShareRefused(Refusal.FULL, f"the inbox holds {self._bytes} bytes of shares; the limit is "
                                             f"{self.max_bytes}")
        self._partials[share.message_id] = partial
        partial.shares[share.index] = share
        self._bytes += len(share.data)
        return self._try_combine(partial, share)

    def _try_combine(self, partial: _Partial, new: Share) -> bytes | None:
        """Try the ``k``-subsets that hold the new share (earlier ones were tried already)."""
        k = new.k
        others = [s for index, s in partial.shares.items() if index != new.index]
        if len(others) < k - 1:
            return None
        for group in combinations(others, k - 1):
            if partial.tries >= self.max_tries:
                break
            partial.tries += 1
            try:
                message = combine([new, *group])
            except CryptoError:
                continue
            self._drop(new.message_id)
            self._delivered.add(new.message_id)
            heapq.heappush(self._delivered_expiry, (new.expiry, new.message_id))
            return message
        if len(partial.shares) == new.n or partial.tries >= self.max_tries:
            self._drop(new.message_id)
            raise ShareRefused(Refusal.INTEGRITY, f"no {k} of the {len(partial.shares)} shares received match "
                                                  "the message's commitment; the message is dropped")
        return None

    def _drop(self, message_id: bytes) -> None:
        partial = self._partials.pop(message_id)
        self._bytes -= sum(len(s.data) for s in partial.shares.values())

    def _expire(self, now: float) -> None:
        for message_id in [m for m, p in self._partials.items() if p.first.expiry <= now]:
            self._drop(message_id)
        while self._delivered_expiry and self._delivered_expiry[0][0] <= now:
            self._delivered.discard(heapq.heappop(self._delivered_expiry)[1])
