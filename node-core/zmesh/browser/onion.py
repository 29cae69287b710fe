"""Onion services in a tab (docs/browser.md, "Onion services"): descriptors at this page's own
origin (``/v1/onion/``, through the page's ``fetch``), and ``host_tab``, which ``vpn.host()`` in
``web/meshvpn.js`` calls to host the tab's service with the same ``zmesh.aio.onion`` code a native
``zmesh service`` runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyodide.ffi import create_proxy  # type: ignore[import-not-found]

from ..aio.driver import IncomingStream
from ..aio.onion import StoreDescriptors
from ..cells import EndReason
from ..crypto.provider import CryptoProvider
from ..errors import ConfigError
from ..onion.introduce import ServiceKeys
from .page_http import PageHttp


def page_descriptors(provider: CryptoProvider) -> StoreDescriptors:
    """The descriptor store of the signal server that served this page."""
    return StoreDescriptors(PageHttp(), "", provider)


async def host_tab(vpn: Any, seed: bytes, port: int, on_stream: Callable[[Any], Any] | None) -> str:
    """Host the service of ``seed`` (the tab's saved service key) on ``vpn``, a tab's ``MeshVPN``;
    its ``.mesh`` address. Messages still arrive as messages; a stream to ``port`` is accepted and
    handed to ``on_stream`` (a JS function), as a proxy that outlives the call; any other port is
    refused with END ``SERVICE_PORT``."""
    if on_stream is not None and not (isinstance(port, int) and 1 <= port <= 65535):
        raise ConfigError(f"a service port must be 1..65535, got {port!r}")
    keys = await ServiceKeys.from_seed(vpn.driver.node.provider, bytes(seed))

    async def serve(request: IncomingStream) -> None:
        if on_stream is None or request.port != port:
            await request.reject(EndReason.SERVICE_PORT)
            return
        on_stream(create_proxy(await request.accept()))

    return await vpn.host(keys, on_stream=serve)
