"""Native nodes' side of the directory authorities: HTTP to them, the consensus view over it with its
on-disk cache (``<data_dir>/consensus.cache``, docs/directory.md §6), and a relay's publication.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp

from zmesh.consensus_view import MAX_DESCRIPTORS_SIZE, AuthorityRef, ConsensusView
from zmesh.crypto.provider import CryptoProvider
from zmesh.errors import ConfigError, TransportError, ZmeshError
from zmesh_signal.limits import read_limited

from .guard_file import write_atomically

log = logging.getLogger(__name__)

CACHE_FILE = "consensus.cache"


class AuthorityClient:
    """One HTTP session for every authority call of a node."""

    def __init__(self, authorities: tuple[AuthorityRef, ...], *, timeout: float = 10.0) -> None:
        self.authorities = authorities
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._session

    async def fetch(self, url: str) -> bytes:
        """GET ``url``'s body (at most ``MAX_DESCRIPTORS_SIZE``); ``TransportError`` unless 200."""
        try:
            async with self._http().get(url) as response:
                body = await read_limited(response.content, declared=response.content_length,
                                          limit=MAX_DESCRIPTORS_SIZE)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            raise TransportError(f"{url} answered HTTP {status}: {body[:200].decode(errors='replace')}")
        return body

    async def publish(self, raw: bytes) -> int:
        """POST a descriptor to every authority (each tests the relay before answering); how many
        accepted it. Refusals are logged with the authority's reason."""
        async def one(authority: AuthorityRef) -> bool:
            url = authority.url + "/v1/descriptor"
            try:
                async with self._http().post(url, data=raw, timeout=aiohttp.ClientTimeout(total=30),
                                             headers={"Content-Type": "application/octet-stream"}) as response:
                    answer = await response.text()
                    if response.status == 200:
                        return True
                    log.warning("%s did not list this relay: HTTP %d %s", authority.url, response.status, answer[:300])
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("cannot publish to %s: %s", authority.url, exc)
            return False

        return sum(await asyncio.gather(*(one(a) for a in self.authorities)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def open_consensus_view(config: dict[str, Any], client: AuthorityClient, provider: CryptoProvider,
                              data_dir: str) -> ConsensusView:
    """A consensus view for ``config``'s authorities, started from ``data_dir``'s cache if it is
    still good (``data_dir`` empty: memory only)."""
    folder = Path(data_dir).expanduser() if data_dir else None

    def store(data: bytes) -> None:
        assert folder is not None
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(folder / CACHE_FILE, data)
        except (OSError, ConfigError, ZmeshError) as exc:
            log.warning("cannot save the consensus cache: %s", exc)

    view = ConsensusView(config["directory.authorities"], client.fetch, provider,
                         store=store if folder is not None else None)
    if folder is not None and (folder / CACHE_FILE).exists():
        if await view.load_cached((folder / CACHE_FILE).read_bytes()):
            log.info("starting from the cached consensus (%d relays)", len(view.live()))
    return view
