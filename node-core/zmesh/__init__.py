"""zmesh: a pure-Python, sans-IO onion-routing overlay core (runs on CPython and Pyodide)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def connect(signal_url: str, destination: str | None = None, **options: Any) -> Any:
    """A ``MeshVPN`` connected through the mesh of ``signal_url``, over native transports:
    ``vpn = await zmesh.connect(url, hops=3)`` or ``async with zmesh.connect(url) as vpn:``.
    ``options`` are ``MeshOptions`` (hops, country, entry, ...). Needs the native extra
    (``pip install 'zmesh[native]'``); a tab uses ``MeshVPN`` from ``meshvpn.js`` instead."""
    from zmesh_relay.mesh import Connecting  # native only: the core itself imports no I/O stack

    return Connecting(signal_url, destination, options)
