"""Service descriptors at the signal server's ``/v1/onion/`` store, as a ``DescriptorDirectory``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ...crypto.provider import CryptoProvider
from ...onion.blinding import DEFAULT_PERIOD, time_period
from ...onion.descriptor import ServiceDescriptor, seal_descriptor
from ...onion.directory import HttpClient, fetch_descriptor, publish_descriptor
from ...onion.introduce import ServiceKeys


class StoreDescriptors:
    """``DescriptorDirectory`` on the signal server's ``/v1/onion/`` store (``zmesh.onion.directory``).

    A service seals each descriptor for the current time period and the next (the store's overlap
    rule), with a revision that only grows (milliseconds of wall time, or one more than the last);
    a client fetches the descriptor of an address and opens it (``client_secret``: its X25519 key
    when the service authorises clients); with ``authorized_clients`` (X25519 public keys) a
    service's descriptors open only for those clients."""

    def __init__(self, http: HttpClient, signal_url: str, provider: CryptoProvider, *,
                 clock: Callable[[], float] = time.time, client_secret: bytes | None = None,
                 authorized_clients: Sequence[bytes] = ()) -> None:
        self._http, self._url, self._provider = http, signal_url, provider
        self._clock, self._client_secret = clock, client_secret
        self._authorized = tuple(authorized_clients)
        self._revision = 0

    async def publish(self, keys: ServiceKeys, descriptor: ServiceDescriptor) -> None:
        now = self._clock()
        self._revision = max(self._revision + 1, int(now * 1000))
        current = time_period(now, DEFAULT_PERIOD)
        for period in (current, current + 1):
            sealed = await seal_descriptor(self._provider, keys.seed, descriptor, now=now, revision=self._revision,
                                           period=period, authorized_clients=self._authorized)
            await publish_descriptor(self._http, self._url, sealed)

    async def lookup(self, address: str) -> ServiceDescriptor:
        return await fetch_descriptor(self._http, self._url, self._provider, address, now=self._clock(),
                                      client_secret=self._client_secret)
