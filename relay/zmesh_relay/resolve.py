"""Name resolution for connections whose target a peer chose (exit streams, link dials).

The caller checks every answer and then connects to a checked address itself, never to the name,
so DNS cannot re-point the connection after the check (no rebinding, no mixed answers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from zmesh.netaddr import IPAddress

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos
            if info[0] in (socket.AF_INET, socket.AF_INET6)]


async def resolve(host: str, port: int, resolver: Resolver | None = None) -> list[IPAddress]:
    """Every address of ``host`` in resolver order, duplicates dropped; an IP literal is its own
    answer, resolved by nobody. ``OSError`` if the name does not resolve or has no addresses."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        addresses = list(await (resolver or system_resolver)(host, port))
    except (OSError, UnicodeError, ValueError) as exc:
        raise OSError(f"cannot resolve {host!r}: {exc}") from exc
    if not addresses:
        raise OSError(f"{host!r} has no addresses")
    return list(dict.fromkeys(addresses))
