"""The client side of the signal server's onion descriptor store (docs/onion-services.md,
"Descriptor store API"): a service PUTs its sealed descriptors, a client GETs one by the blinded
key it computes from the address.

HTTP goes through ``HttpClient``, one method a runtime supplies: natively
``zmesh_signal.client.SignalClient`` (aiohttp), in a tab the page's ``fetch``. Overlap rule: a
service publishes for the current period and the next one, so both exist around every boundary;
a client asks for its current period, then the next, which finds the service whenever the two
clocks are less than one period apart.
"""

from __future__ import annotations

from typing import Protocol

from ..crypto.provider import CryptoProvider
from ..encoding import decode_base64
from ..signaling import SignalError, http_answer
from .address import decode_address
from .blinding import DEFAULT_PERIOD, blind_public, time_period
from .descriptor import MAX_SEALED_SIZE, SealedDescriptor, ServiceDescriptor, open_descriptor

# A GET answer is {"descriptor": base64(blob)}: 4/3 of the largest blob plus the JSON around it.
MAX_ANSWER = MAX_SEALED_SIZE * 4 // 3 + 1024


class HttpClient(Protocol):
    """One HTTP exchange: ``(status, body)``; ``TransportError`` when the server cannot be
    reached, a ``ZmeshError`` for an answer over ``MAX_ANSWER`` bytes."""

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]: ...


def descriptor_url(signal_url: str, blinded_key: bytes) -> str:
    """``<signal_url>/v1/onion/<blinded key in lowercase hex>``."""
    return f"{signal_url.rstrip('/')}/v1/onion/{blinded_key.hex()}"


async def publish_descriptor(http: HttpClient, signal_url: str, sealed: SealedDescriptor) -> None:
    """PUT ``sealed``; ``SignalError`` with the store's code when it refuses (``stale``,
    ``replay``: a revision at least as high is stored; ``full``, ``rate_limited``: try later)."""
    status, body = await http.request("PUT", descriptor_url(signal_url, sealed.blinded_key), sealed.blob)
    http_answer(status, body, "an onion descriptor PUT")


async def fetch_descriptor(http: HttpClient, signal_url: str, provider: CryptoProvider, address: str, *,
                           now: float, client_secret: bytes | None = None,
                           period_length: int = DEFAULT_PERIOD) -> ServiceDescriptor:
    """The verified, decrypted descriptor of ``address``, from this period's or the next one's
    blinded key; ``SignalError`` ``not_found`` when the store has neither (the service is not
    publishing here, or the address is someone else's), ``OnionAuthError`` when the service
    does not list ``client_secret``'s key."""
    service = decode_address(address)
    current = time_period(now, period_length)
    for period in (current, current + 1):
        url = descriptor_url(signal_url, blind_public(service, period, period_length))
        status, body = await http.request("GET", url)
        if status == 404:
            continue
        blob = decode_base64(http_answer(status, body, "an onion descriptor GET").get("descriptor"),
                             "the onion descriptor")
        return await open_descriptor(provider, address, blob, now=now, period_length=period_length,
                                     client_secret=client_secret)
    raise SignalError("not_found", "no descriptor for this .mesh address at this signal server: the service is "
                      "not online (or publishes elsewhere)", status=404)


__all__ = ["MAX_ANSWER", "HttpClient", "descriptor_url", "fetch_descriptor", "publish_descriptor"]
