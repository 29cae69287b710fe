"""A minimal HTTP/1.0 GET over a mesh stream: enough for ``MeshVPN.fetch`` in a tab.

HTTP/1.0 with ``Connection: close`` keeps it simple and honest: the exit closes the stream when
the response is complete. Only ``http://`` URLs (the exit speaks TCP; TLS would need a TLS stack
in the tab, which is future work). The response is bounded by ``max_size``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigError, ProtocolError
from .driver import MeshStream

MAX_RESPONSE = 64 << 20


def parse_url(url: str) -> tuple[str, int, str]:
    """``(host, port, path)`` of an ``http://`` URL; ``ConfigError`` for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port  # urllib checks it lazily, with ValueError
    except ValueError as exc:
        raise ConfigError(f"malformed URL {url!r}: {exc}") from exc
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"only http:// URLs can be fetched through the mesh, got {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port or 80, path


async def http_get(stream: MeshStream, host: str, path: str, *, max_size: int = MAX_RESPONSE) -> tuple[int, bytes]:
    """Send GET on an open stream; return ``(status, body)``."""
    await stream.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii"))
    parts, size = [], 0
    while chunk := await stream.read():
        size += len(chunk)
        if size > max_size:
            await stream.close()
            raise ProtocolError(f"response larger than {max_size} bytes")
        parts.append(chunk)
    return parse_response(b"".join(parts))


def parse_response(data: bytes) -> tuple[int, bytes]:
    """``(status, body)`` of a whole HTTP/1.0 response from a (untrusted) server."""
    head, sep, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or len(status_line[1]) != 3 or not status_line[1].isdigit():
        raise ProtocolError("the server's answer is not HTTP")
    return int(status_line[1]), body
