"""The relay list from the directory authorities' consensus: what nodes use when
``directory.authorities`` is configured, in place of the signal server's list (``DirectoryView``,
whose interface this copies: ``relays``, ``live``, ``find``, ``refresh``, ``on_refresh``).

A consensus is fetched from any authority (``GET /v1/consensus``), accepted only with valid hybrid
signatures from more than half of the configured authorities (``consensus.accept_consensus``;
signatures on the same body fetched from several authorities add up), then the descriptors it
names are fetched (``GET /v1/descriptors``) and each must hash to its consensus digest and verify.
Path selection then sees each relay with the consensus's bandwidth (measured by the authorities,
not the relay's claim) and as an exit only with the Exit flag; ``is_guard`` says whether it has Guard.

The last good consensus and its descriptors are handed to ``store`` (the native client writes a
file, docs/directory.md §6) and given back as ``cached`` after a restart, so a node starts
without reaching any authority while that consensus is still valid. A new one is fetched once the
current one is past ``fresh_until`` (before it goes stale at ``valid_until``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .consensus import Consensus, accept_consensus, parse_consensus
from .crypto.provider import CryptoProvider
from .descriptor import Descriptor, verify_descriptor
from .encoding import pack_canonical, unpack_canonical
from .errors import ConfigError, ConsensusRefused, CryptoError, ProtocolError, TransportError, ZmeshError
from .hybrid import fingerprint_text, parse_fingerprint
from .identity import PeerId
from .votes import MAX_RELAYS

log = logging.getLogger(__name__)

MAX_DESCRIPTORS_SIZE = MAX_RELAYS * 8192
RETRY_AFTER = 5.0  # seconds between refresh attempts while no authority answers well

Fetch = Callable[[str], Awaitable[bytes]]  # a URL → its body, or TransportError


@dataclass(frozen=True, slots=True)
class AuthorityRef:
    """A configured authority: where to reach it and the fingerprint its signatures must carry."""

    url: str
    fingerprint: bytes

    @classmethod
    def parse(cls, text: str) -> AuthorityRef:
        """``URL#FINGERPRINT`` (the CLI's and the environment's form); ``ConfigError`` if malformed."""
        url, sep, fingerprint = text.partition("#")
        if not sep:
            raise ConfigError("an authority is URL#FINGERPRINT")
        return cls.of(url, fingerprint)

    @classmethod
    def of(cls, url: str, fingerprint: str) -> AuthorityRef:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"an authority URL is http:// or https://, got {url!r}")
        return cls(url.rstrip("/"), parse_fingerprint(fingerprint))

    @property
    def text(self) -> str:
        return f"{self.url}#{fingerprint_text(self.fingerprint)}"


def check_authorities(refs: Sequence[AuthorityRef]) -> tuple[AuthorityRef, ...]:
    if len({r.fingerprint for r in refs}) != len(refs):
        raise ConfigError("an authority fingerprint is configured twice")
    return tuple(refs)


def pack_cache(consensus: bytes, descriptors: list[bytes]) -> bytes:
    return pack_canonical({"v": 1, "consensus": consensus, "descriptors": descriptors})


class ConsensusView:
    """Relays from the last accepted consensus. ``wall_clock``: Unix seconds (validity);
    ``clock``: monotonic (retry pacing)."""

    def __init__(self, authorities: Sequence[AuthorityRef], fetch: Fetch, provider: CryptoProvider, *,
                 store: Callable[[bytes], None] | None = None, wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        if not authorities:
            raise ConfigError("a consensus view needs at least one authority")
        self.authorities = check_authorities(authorities)
        self.fetch, self.provider, self.store = fetch, provider, store
        self.wall_clock, self.clock = wall_clock, clock
        self._rng = rng or random.SystemRandom()
        self.consensus: Consensus | None = None
        self.rejected = 0  # consensuses or descriptors refused (forged, under-signed, mismatched)
        self.last_error: ZmeshError | None = None
        self._relays: dict[PeerId, Descriptor] = {}
        self._guards: frozenset[PeerId] = frozenset()
        self._failed_at = float("-inf")
        self.on_refresh: Callable[[list[Descriptor]], Awaitable[None]] | None = None

    @property
    def fingerprints(self) -> list[bytes]:
        return [a.fingerprint for a in self.authorities]

    async def load_cached(self, data: bytes) -> bool:
        """Start from a stored consensus (``pack_cache``); False (and nothing changed) if it is
        unreadable, no longer valid or not signed by a majority of today's authorities."""
        try:
            fields = unpack_canonical(data, max_size=MAX_DESCRIPTORS_SIZE * 2, what="consensus cache",
                                      max_items=MAX_RELAYS)
            if not isinstance(fields, dict) or set(fields) != {"v", "consensus", "descriptors"} \
                    or not isinstance(fields["descriptors"], list):
                raise ProtocolError("the consensus cache has unknown fields")
            await self._adopt(fields["consensus"], fields["descriptors"], save=False)
        except (ZmeshError, TypeError) as exc:
            log.warning("not using the cached consensus: %s", exc)
            return False
        return True

    async def refresh(self) -> list[Descriptor]:
        """Fetch a consensus from the authorities (in random order) until one is accepted. If none
        is, keep the current one while it is valid; else raise ``ConsensusRefused`` naming what was
        missing (or ``TransportError`` if no authority answered)."""
        order = list(self.authorities)
        self._rng.shuffle(order)
        errors: list[str] = []
        gathered: dict[bytes, dict[bytes, dict]] = {}  # body digest → signatures seen on it
        refused: ZmeshError | None = None
        for authority in order:
            try:
                raw = await self.fetch(authority.url + "/v1/consensus")
                raw = self._merge(raw, gathered)
                descriptors = await self._descriptors(authority)
                await self._adopt(raw, descriptors, save=True)
                self.last_error = None
                live = self.live()
                if self.on_refresh is not None:
                    await self.on_refresh(live)
                return live
            except ConsensusRefused as exc:
                refused = exc
                errors.append(f"{authority.url}: {exc}")
            except ZmeshError as exc:
                errors.append(f"{authority.url}: {exc}")
        self._failed_at = self.clock()
        error = refused or TransportError("no directory authority gave a usable consensus: " + " | ".join(errors))
        self.last_error = error
        self.rejected += 1
        if self.consensus is not None and self.wall_clock() < self.consensus.period.valid_until:
            log.warning("keeping the current consensus: %s", " | ".join(errors))
            return self.live()
        raise error

    def _merge(self, raw: bytes, gathered: dict[bytes, dict[bytes, dict]]) -> bytes:
        """``raw`` with the signatures other authorities served on the same body added."""
        consensus = parse_consensus(raw)
        seen = gathered.setdefault(consensus.digest, {})
        seen.update(consensus.signatures)
        return Consensus(consensus.body, consensus.period, consensus.voters, consensus.relays, dict(seen)).to_bytes()

    async def _descriptors(self, authority: AuthorityRef) -> list[bytes]:
        raw = await self.fetch(authority.url + "/v1/descriptors")
        items = unpack_canonical(raw, max_size=MAX_DESCRIPTORS_SIZE, what="descriptor list", max_items=MAX_RELAYS)
        if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
            raise ProtocolError("an authority's descriptor list is a list of descriptors")
        return items

    async def _adopt(self, raw: bytes, descriptors: list, *, save: bool) -> None:
        """Accept ``raw`` and match ``descriptors`` to it; only then replace the current state."""
        now = self.wall_clock()
        consensus = await accept_consensus(self.provider, raw, authorities=self.fingerprints, now=now)
        if self.consensus is not None and consensus.period.valid_after < self.consensus.period.valid_after:
            raise ConsensusRefused("the consensus is older than the one this node has")
        by_digest = {hashlib.sha256(d).digest(): d for d in descriptors if isinstance(d, bytes)}
        relays: dict[PeerId, Descriptor] = {}
        kept: list[bytes] = []
        for entry in consensus.relays:
            blob = by_digest.get(entry.digest)
            if blob is None:
                continue  # its descriptor is not served (yet): the relay cannot be used
            try:
                descriptor = await verify_descriptor(self.provider, blob, now=now)
            except (ProtocolError, CryptoError) as exc:
                self.rejected += 1
                log.warning("ignoring a consensus relay's descriptor: %s", exc)
                continue
            if descriptor.peer_id != entry.peer_id:
                continue
            caps = dataclasses.replace(descriptor.capabilities, bandwidth=entry.bandwidth,
                                       exit=descriptor.capabilities.exit and "Exit" in entry.flags)
            relays[entry.peer_id] = dataclasses.replace(descriptor, capabilities=caps)
            kept.append(blob)
        self.consensus, self._relays = consensus, relays
        self._guards = frozenset(e.peer_id for e in consensus.relays if "Guard" in e.flags)
        if save and self.store is not None:
            self.store(pack_cache(consensus.to_bytes(), kept))

    def is_guard(self, relay: Descriptor) -> bool:
        """Whether the consensus gives ``relay`` the Guard flag (guards are drawn only from these)."""
        return relay.peer_id in self._guards

    def live(self) -> list[Descriptor]:
        now = self.wall_clock()
        if self.consensus is None or now >= self.consensus.period.valid_until:
            return []
        return [d for d in self._relays.values() if d.is_live(now)]

    def _due(self) -> bool:
        if self.clock() - self._failed_at < RETRY_AFTER:
            return False
        return self.consensus is None or self.wall_clock() >= self.consensus.period.fresh_until

    async def relays(self, *, refresh: bool = False) -> list[Descriptor]:
        """The live relays, fetching a newer consensus first once this one is past fresh_until."""
        if refresh or self._due():
            try:
                return await self.refresh()
            except ZmeshError:
                if self.live():
                    return self.live()
                raise
        return self.live()

    async def find(self, peer: PeerId) -> Descriptor | None:
        """The consensus relay ``peer``, or None: a relay outside the consensus is never dialed."""
        if self._due():
            try:
                await self.refresh()
            except ZmeshError as exc:
                log.debug("consensus refresh failed: %s", exc)
        found = self._relays.get(peer)
        return found if found is not None and found.is_live(self.wall_clock()) else None
