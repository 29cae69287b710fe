"""Upstream-proxy exits: an exit that reaches its targets through an HTTP CONNECT proxy.

An operator may not want targets to see the exit's own address, or may have an egress proxy
(a corporate gateway, a hosted forwarding service) as the only way out. The exit still resolves
and checks every target against its own policy first (``exit_policy``) and then asks the proxy to
CONNECT to the checked *address*, never the name: neither the proxy's resolver nor DNS can re-point
the stream past the policy. Any failure of the proxy (unreachable, silent, a non-2xx answer, an
answer that is not HTTP) is ``StreamError(UPSTREAM_FAILED)``, which the client sees as SOCKS 0x03.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from zmesh.cells import EndReason
from zmesh.errors import ConfigError, StreamError
from zmesh.netaddr import IPAddress

# The proxy's answer head must fit the StreamReader's buffer limit (asyncio's default, 64 KiB);
# a longer one is refused rather than buffered.
_URL = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?")
_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[^\r\n]*")


@dataclass(frozen=True, slots=True)
class Upstream:
    """An HTTP CONNECT proxy, ``http://HOST:PORT`` (no path, no credentials)."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Upstream:
        match = _URL.fullmatch(url.strip())
        if match is None or not 1 <= int(match[2]) <= 65535:
            raise ConfigError(f"exit upstream {url!r} is invalid: write http://HOST:PORT (an HTTP CONNECT proxy; "
                              "no path and no credentials)")
        return cls(match[1].strip("[]"), int(match[2]))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _failed(upstream: Upstream, what: str) -> StreamError:
    return StreamError(f"upstream proxy {upstream} {what}", EndReason.UPSTREAM_FAILED)


async def connect_through(upstream: Upstream, address: IPAddress, port: int, timeout: float
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``address:port`` tunnelled by ``upstream``; the tunnel is set up within ``timeout`` s."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(upstream.host, upstream.port), timeout)
    except TimeoutError as exc:
        raise _failed(upstream, "did not accept a connection in time") from exc
    except OSError as exc:
        raise _failed(upstream, f"is unreachable ({exc.strerror or type(exc).__name__})") from exc
    target = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    try:
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except TimeoutError as exc:
        writer.close()
        raise _failed(upstream, "did not answer the CONNECT in time") from exc
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        writer.close()
        raise _failed(upstream, "closed the connection or sent an oversized answer to the CONNECT") from exc
    status = _STATUS.match(head)
    if status is None or not status[1].startswith(b"2"):
        writer.close()
        answer = head.split(b"\r\n", 1)[0][:80].decode("ascii", "replace")
        raise _failed(upstream, f"refused the CONNECT: {answer!r}")
    return reader, writer
