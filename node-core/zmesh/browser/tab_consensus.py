"""A tab's relays from the directory authorities (MeshVPN option ``authorities``): the same
``ConsensusView`` native nodes use, verified in the tab with its ``WebCryptoProvider`` (Ed25519
and ML-DSA-65), fetched straight from the authorities' origins (they answer these GETs with CORS,
docs/directory.md §8), and cached in IndexedDB by ``web/meshvpn.js``.

With authorities configured the signal server is no source of relays for the tab: it still serves
the page and WebRTC signaling, and its "the listing changed" notices only make the tab fetch a
consensus when its own is due.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pyodide.ffi import to_js  # type: ignore[import-not-found]

from ..consensus_view import MAX_DESCRIPTORS_SIZE, AuthorityRef, ConsensusView
from ..crypto.provider import CryptoProvider
from ..errors import ConfigError, TransportError
from .page_http import PageHttp

log = logging.getLogger(__name__)

MAX_AUTHORITIES = 9  # a consensus carries at most 9 signatures (docs/directory.md §2)


async def fetch_public(url: str) -> bytes:
    """GET an authority's public document (at most ``MAX_DESCRIPTORS_SIZE`` bytes)."""
    status, body = await PageHttp(MAX_DESCRIPTORS_SIZE).request("GET", url)
    if status != 200:
        raise TransportError(f"{url} answered HTTP {status}")
    return body


def parse_authorities(texts: Any) -> tuple[AuthorityRef, ...]:
    """The option's ``["URL#FINGERPRINT", ...]`` (meshvpn.js checked the shape; checked again here)."""
    if not isinstance(texts, Sequence) or isinstance(texts, str) or not 1 <= len(texts) <= MAX_AUTHORITIES:
        raise ConfigError(f"authorities must be a list of 1..{MAX_AUTHORITIES} 'URL#FINGERPRINT' strings")
    return tuple(AuthorityRef.parse(text) for text in texts)


async def tab_consensus(texts: Any, provider: CryptoProvider, saved: bytes | None,
                        save: Callable[[Any], Any] | None) -> ConsensusView:
    """A view of ``texts``' authorities, started from ``saved`` (the IndexedDB copy) if it is still
    accepted, handing each newly accepted consensus to ``save`` (a JS function)."""
    store = None if save is None else (lambda data: save(to_js(data)))
    view = ConsensusView(parse_authorities(texts), fetch_public, provider, store=store)
    if saved and await view.load_cached(saved):
        log.info("starting from the cached consensus (%d relays)", len(view.live()))
    return view
