"""A minimal HTTP/1.0 GET over a mesh stream: enough for ``MeshVPN.fetch`` in a tab.

HTTP/1.0 with ``Connection: close`` keeps it simple and honest: the server closes the stream when
the response is complete. ``http://`` goes in clear to the exit; ``https://`` runs over a
``TlsStream`` (``zmesh.aio.tls``), so the exit sees only ciphertext. The response is bounded by
``max_size``, and a body shorter than its ``Content-Length`` is an error, not a response.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigError, ProtocolError
from .driver import MeshStream
from .tls import TlsStream

MAX_RESPONSE = 64 << 20
MAX_HEADERS = 100  # header lines kept from one response; more is an error


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What ``MeshVPN.fetch`` returns: the status, the headers (names lower-cased; a repeated
    header's values joined with ", ", as RFC 9110 §5.3 allows) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path)`` of an ``http://`` or ``https://`` URL; ``ConfigError`` for
    anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port  # urllib checks it lazily, with ValueError
    except ValueError as exc:
        raise ConfigError(f"malformed URL {url!r}: {exc}") from exc
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"only http:// and https:// URLs can be fetched through the mesh, got {url!r}")
    if not url.isascii():  # the request line and Host header are ASCII
        raise ConfigError(f"the URL must be ASCII (a punycode host, a percent-encoded path), got {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], path


async def http_get(stream: MeshStream | TlsStream, host: str, path: str, *,
                   max_size: int = MAX_RESPONSE) -> HttpResponse:
    """Send GET on an open stream; return the response. Over TLS, a session that ended without
    close_notify counts as complete only when the body matches its ``Content-Length``."""
    await stream.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii"))
    parts, size = [], 0
    while chunk := await stream.read():
        size += len(chunk)
        if size > max_size:
            await stream.close()
            raise ProtocolError(f"response larger than {max_size} bytes")
        parts.append(chunk)
    response = parse_response(b"".join(parts))
    if isinstance(stream, TlsStream) and not stream.closed_cleanly and "content-length" not in response.headers:
        raise ProtocolError("the TLS session ended without close_notify and the answer has no length: "
                            "it may have been cut short")
    return response


def parse_response(data: bytes) -> HttpResponse:
    """The whole HTTP/1.0 response from a (untrusted) server; ``ProtocolError`` if it is not one."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split()
    if not sep or len(status_line) < 2 or len(status_line[1]) != 3 or not status_line[1].isdigit():
        raise ProtocolError("the server's answer is not HTTP")
    if len(lines) - 1 > MAX_HEADERS:
        raise ProtocolError(f"the server sent more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ProtocolError("the server sent a malformed header line")
        key, text = name.decode("latin-1").lower(), value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    length = headers.get("content-length")
    if length is not None and (not (length.isascii() and length.isdigit()) or int(length) != len(body)):
        raise ProtocolError(f"the body is {len(body)} bytes but Content-Length says {length!r}: cut short or malformed")
    return HttpResponse(int(status_line[1]), headers, body)
