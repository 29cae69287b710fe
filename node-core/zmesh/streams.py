"""Stream targets as carried in BEGIN: ``host:port`` in ASCII, IPv6 literals in brackets.

An empty host names the circuit's last node itself (a message stream to a destination PeerId);
its port then selects a service on that node.
"""

from __future__ import annotations

import re

from .errors import ConfigError, ProtocolError

MAX_HOST_LEN = 255
_HOSTNAME = re.compile(r"[A-Za-z0-9._:-]*")


def _check(host: str, port: int) -> None:
    if len(host) > MAX_HOST_LEN or not _HOSTNAME.fullmatch(host):
        raise ValueError("host must be a DNS name or an IP literal of at most 255 characters")
    if not isinstance(port, int) or not 0 <= port <= 65535 or (host and port == 0):
        raise ValueError("port must be 1..65535 (0 only for a destination's own services)")


def format_target(host: str, port: int) -> bytes:
    """Encode a BEGIN target; ``ConfigError`` names what is wrong with it."""
    host = host.strip("[]")
    try:
        _check(host, port)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")


def parse_target(data: bytes) -> tuple[str, int]:
    """Decode a BEGIN target from a peer; ``ProtocolError`` if malformed."""
    try:
        text = data.decode("ascii")
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or len(port_text) > 5:
            raise ValueError("missing port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError("IPv6 literal without brackets")
        port = int(port_text)
        _check(host, port)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed BEGIN target: {exc}") from exc
    return host, port
