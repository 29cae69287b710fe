"""Which network addresses a node may connect to, and what a relay's link address may say.

One table of special-purpose ranges serves exits (``zmesh_relay.exit_policy``), native link
dialers, the tab and the signal server's directory. Loopback, private (RFC 1918, fc00::/7),
link-local, shared (100.64/10), multicast, unspecified, broadcast, reserved, documentation and
benchmarking ranges are refused — also when they hide inside IPv6 (IPv4-mapped, NAT64, 6to4). The
table is explicit rather than left to ``ipaddress.is_global``, whose answers differ between Python
versions (3.11 calls ``64:ff9b::7f00:1`` and ``fec0::1`` global). The ranges marked *local* hold
real hosts of a LAN or test network; a declared private network (``allow_private``) opens those.

A descriptor's link address is attacker-chosen text, so it is not a URL to fetch: it is parsed
strictly into scheme, host, port, an optional path and an optional certificate pin (``LinkAddress``)
and the dialer builds the URL itself, on ``LINK_PATH`` unless the address names another path (a
relay's ``relay.ws_path``: a few segments of unreserved characters, never ``.`` or ``..``, so the
URL a dialer opens is exactly the text it checked). Hostnames are checked after resolution by whoever resolves them
(``check_resolved``); without a resolver (a tab, the directory) only literals and ``localhost``
names can be judged (``LinkAddress.refusal``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .errors import ConfigError, ProtocolError, TransportError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LINK_PATH = "/v1/link"
MAX_PATH = 128  # characters of a link path
LINK_SCHEMES = {"ws": 80, "wss": 443}  # scheme → default port
PRIVATE_SWITCH = "network.allow_private_addresses (ZMESH_NETWORK_ALLOW_PRIVATE_ADDRESSES=true)"


class _Class(NamedTuple):
    """Why a range is refused; ``local`` ranges hold real hosts (``allow_private`` opens them)."""

    reason: str
    local: bool


def _table(*rows: tuple[str, str, bool]) -> tuple[tuple[IPNetwork, _Class], ...]:
    return tuple((ipaddress.ip_network(cidr), _Class(reason, local)) for cidr, reason, local in rows)


# Checked in order: the first match names the reason.
_FORBIDDEN_V4 = _table(
    ("0.0.0.0/8", "unspecified ('this network')", False),
    ("10.0.0.0/8", "private (RFC 1918)", True),
    ("100.64.0.0/10", "shared address space (RFC 6598, carrier-grade NAT)", True),
    ("127.0.0.0/8", "loopback", True),
    ("169.254.0.0/16", "link-local", True),
    ("172.16.0.0/12", "private (RFC 1918)", True),
    ("192.0.0.0/24", "IETF protocol assignment", False),
    ("192.0.2.0/24", "documentation", False),
    ("192.168.0.0/16", "private (RFC 1918)", True),
    ("198.18.0.0/15", "benchmarking", True),
    ("198.51.100.0/24", "documentation", False),
    ("203.0.113.0/24", "documentation", False),
    ("224.0.0.0/4", "multicast", False),
    ("255.255.255.255/32", "broadcast", False),
    ("240.0.0.0/4", "reserved", False),
)
_FORBIDDEN_V6 = _table(
    ("::/128", "unspecified", False),
    ("::1/128", "loopback", True),
    ("::/96", "IPv4-compatible (deprecated)", False),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)", True),
    ("::/8", "reserved", False),
    ("100::/64", "discard-only", False),
    ("2001::/32", "Teredo tunnel", False),
    ("2001::/23", "IETF protocol assignment", False),
    ("2001:db8::/32", "documentation", False),
    ("3fff::/20", "documentation", False),
    ("fc00::/7", "unique local (private)", True),
    ("fe80::/10", "link-local", True),
    ("fec0::/10", "site-local (deprecated)", True),
    ("ff00::/8", "multicast", False),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _carried_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries (and how), for forms that reach that IPv4 host."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


IPV4_DIVERSITY_PREFIX = 16
IPV6_DIVERSITY_PREFIX = 32


def diversity_network(host: str) -> str:
    """The network a link host counts as for path diversity: its IPv4 /16 or IPv6 /32 (an IPv4
    address carried in IPv6 counts as that IPv4 address, loopback included: 127.1.0.1 and 127.2.0.1
    are two networks). A DNS name is not resolved here (the pure core has no resolver), so it is a
    network of its own, named by itself: two relays publishing one name share it."""
    address = _parse_ip(host.strip("[]"))
    if address is None:
        return f"name:{host.lower().removesuffix('.')}"
    if isinstance(address, ipaddress.IPv6Address):
        carried = _carried_ipv4(address)
        if carried is not None:
            address = carried[1]
    prefix = IPV4_DIVERSITY_PREFIX if address.version == 4 else IPV6_DIVERSITY_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def classify(address: IPAddress) -> tuple[str, bool] | None:
    """``(reason, local)`` if ``address`` is not public unicast, None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = _carried_ipv4(address)
        if carried is not None:
            form, inner = carried
            found = classify(inner)
            return None if found is None else (f"{form} form of {inner}, {found[0]}", found[1])
        table = _FORBIDDEN_V6
    else:
        table = _FORBIDDEN_V4
    for network, cls in table:
        if address in network:
            return cls
    if address.is_reserved:  # unallocated IPv6 space outside 2000::/3
        return "reserved", False
    if not address.is_global:  # whatever else this Python's registry knows to be special-purpose
        return "special-purpose (not globally routable)", False
    return None


def refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a node must not connect to ``address`` (e.g. ``"loopback"``), or None if it may.

    ``allow_private`` (a declared private network) admits the local ranges; unspecified,
    multicast, broadcast, reserved and documentation addresses stay refused."""
    found = classify(address)
    if found is None or (allow_private and found[1]):
        return None
    return found[0]


def is_local_name(host: str) -> bool:
    """``localhost`` and its subdomains always mean this machine (RFC 6761 §6.3)."""
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def check_resolved(host: str, addresses: Iterable[IPAddress], *, allow_private: bool) -> list[IPAddress]:
    """The distinct resolved ``addresses`` of ``host`` if every one may be dialed; otherwise
    ``TransportError`` naming the first refused one (one bad answer refuses them all, so DNS
    cannot mix a private address in)."""
    checked = list(dict.fromkeys(addresses))
    if not checked:
        raise TransportError(f"{host!r} has no addresses")
    for address in checked:
        why = refusal(address, allow_private=allow_private)
        if why is not None:
            raise _refused(str(address) if str(address) == host else f"{address} ({host!r})", why)
    return checked


def _refused(target: str, why: str) -> TransportError:
    return TransportError(f"refusing to dial {target}: {why} address; a private test network can allow it "
                          f"with {PRIVATE_SWITCH}")


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# scheme://host[:port][/PATH][#sha256=PIN] and nothing else: no userinfo, query, escapes or dot segments.
_PATH = r"(?:/[A-Za-z0-9_~.-]{1,64}){1,8}"
_LINK = re.compile(r"(?P<scheme>wss?)://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[0-9A-Za-z.-]+))"
                   rf"(?::(?P<port>[0-9]{{1,5}}))?(?P<path>{_PATH})?(?:#sha256=(?P<pin>[0-9a-f]{{64}}))?")
PIN_SIZE = 32  # SHA-256 of the relay's DER certificate
_LABEL = re.compile(r"(?!-)[0-9a-z-]{1,63}(?<!-)")
_TOP_LABEL = re.compile(r"[a-z][0-9a-z-]*")  # a name's last label: never all digits (WHATWG reads 127.1 as IPv4)


def check_link_path(path: str, error: type[Exception] = ConfigError) -> str:
    """``path`` if it is a link path (``/seg[/seg…]``, unreserved characters, no dot segments,
    at most ``MAX_PATH`` characters), else ``error`` saying why."""
    if (not isinstance(path, str) or len(path) > MAX_PATH or not re.fullmatch(_PATH, path)
            or any(segment in (".", "..") for segment in path.split("/"))):
        raise error(f"a link path is /SEGMENT[/SEGMENT…] of A-Z a-z 0-9 _ ~ . - (no . or .. segment, at most "
                    f"{MAX_PATH} characters), got {str(path)!r:.80}")
    return path


@dataclass(frozen=True, slots=True)
class LinkAddress:
    """A relay's WebSocket link address: ``ws``/``wss``, a host (IP literal or DNS name, lower
    case), a port and, for ``wss``, an optional pin: the SHA-256 of the relay's DER certificate,
    written ``#sha256=HEX`` (a fragment is never sent, so the pin stays the dialer's business).
    A pinned address is dialed checking the pin instead of a certificate authority, which makes a
    self-signed certificate safe between native nodes: the pin comes in the relay's signed
    descriptor. ``url`` is the one URL a dialer opens; ``str()`` is the descriptor's text."""

    scheme: str
    host: str
    port: int
    pin: bytes | None = None
    path: str = LINK_PATH

    @classmethod
    def parse(cls, text: str) -> LinkAddress:
        """Parse a descriptor's ``ws`` entry strictly; ``ProtocolError`` says what is wrong."""
        match = _LINK.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ProtocolError(f"link address {text!r:.80} is not ws[s]://HOST[:PORT][/PATH] "
                                "(no user, query, fragment or escapes; PATH segments of A-Z a-z 0-9 _ ~ . -)")
        path = check_link_path(match["path"], ProtocolError) if match["path"] is not None else LINK_PATH
        port = int(match["port"]) if match["port"] is not None else LINK_SCHEMES[match["scheme"]]
        if not 1 <= port <= 65535:
            raise ProtocolError(f"link address port {port} is not within 1-65535")
        pin = bytes.fromhex(match["pin"]) if match["pin"] is not None else None
        if pin is not None and match["scheme"] != "wss":
            raise ProtocolError("only a wss:// link address can carry a certificate pin")
        if match["v6"] is not None:
            literal = _parse_ip(match["v6"])
            if not isinstance(literal, ipaddress.IPv6Address):
                raise ProtocolError(f"link address host [{match['v6']}] is not an IPv6 address")
            return cls(match["scheme"], str(literal), port, pin, path)
        host = match["host"].lower()
        literal = _parse_ip(host)
        if literal is not None:
            return cls(match["scheme"], str(literal), port, pin, path)
        labels = host.removesuffix(".").split(".")
        if (len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels)
                or not _TOP_LABEL.fullmatch(labels[-1])):
            raise ProtocolError(f"link address host {host!r:.80} is neither an IP address nor a DNS name")
        return cls(match["scheme"], host, port, pin, path)

    @property
    def literal(self) -> IPAddress | None:
        """The host as an IP address, or None for a DNS name."""
        return _parse_ip(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    def __str__(self) -> str:
        return self.url + (f"#sha256={self.pin.hex()}" if self.pin is not None else "")

    def pinned(self, certificate_sha256: bytes) -> LinkAddress:
        """This address with ``certificate_sha256`` as its pin (``ConfigError`` unless ``wss``)."""
        if self.scheme != "wss" or len(certificate_sha256) != PIN_SIZE:
            raise ConfigError(f"only a wss:// address can be pinned to a certificate, not {self.url}")
        return LinkAddress(self.scheme, self.host, self.port, certificate_sha256, self.path)

    @property
    def unspecified(self) -> bool:
        """Whether the host is 0.0.0.0 or ``::``: where a server listens on every interface, which
        nobody can dial (a relay must say which address to publish)."""
        literal = self.literal
        return literal is not None and literal.is_unspecified

    def refusal(self, *, allow_private: bool) -> str | None:
        """Why this address must not be dialed, judged without resolving: a non-public literal, or
        a ``localhost`` name. None for an allowed literal or any other name (which the dialer
        still checks after resolution, when it can resolve)."""
        literal = self.literal
        if literal is not None:
            return refusal(literal, allow_private=allow_private)
        return "loopback" if is_local_name(self.host) and not allow_private else None

    def check(self, *, allow_private: bool) -> None:
        """``TransportError`` if ``refusal`` finds a reason."""
        why = self.refusal(allow_private=allow_private)
        if why is not None:
            raise _refused(str(self), why)


def descriptor_refusal(addresses: dict[str, tuple[str, ...]], *, allow_private: bool) -> str | None:
    """Why a directory must refuse a descriptor with these (already parsed) ``addresses``: the
    first ``ws`` address that names a non-public literal or a ``localhost`` name. None if none does."""
    for text in addresses.get("ws", ()):
        why = LinkAddress.parse(text).refusal(allow_private=allow_private)
        if why is not None:
            return f"link address {text} is a {why} address"
    return None


def page_allows_private(page_host: str) -> bool:
    """Whether a tab may dial non-public link addresses: only when its own page came from one
    (``location.hostname``: a local literal, IPv6 in brackets, or a ``localhost`` name). A page
    served from a public name or address keeps the default refusal."""
    if is_local_name(page_host):
        return True
    literal = _parse_ip(page_host.removeprefix("[").removesuffix("]"))
    if literal is None:
        return False
    found = classify(literal)
    return found is not None and found[1]
