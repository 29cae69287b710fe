"""Exit policy: an exit must never become an open door into the networks around it.

By default an exit reaches any port of globally routable unicast addresses only. Loopback, private
(RFC 1918, fc00::/7), link-local, shared (100.64/10), multicast, unspecified, broadcast, reserved,
documentation and benchmarking ranges are refused — also when they hide inside IPv6 (IPv4-mapped,
IPv4-compatible, NAT64, 6to4) — unless an explicit ``--exit-allow CIDR:PORTS`` rule admits them.
The table below is explicit rather than left to ``ipaddress.is_global``, whose answers differ between
Python versions (3.11 calls ``64:ff9b::7f00:1`` and ``fec0::1`` global).

Names are resolved *at the exit*, every answer is checked, and the connection goes to the checked
address itself, so DNS cannot re-point it afterwards (no rebinding, no mixed answers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from zmesh.cells import EndReason
from zmesh.errors import ConfigError, ExitPolicyError, StreamError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

FULL_RANGE = (1, 65535)
_PORTS = re.compile(r"\*|([0-9]{1,5})(?:-([0-9]{1,5}))?")


@dataclass(frozen=True, slots=True)
class ExitRule:
    """``CIDR:PORTS`` where PORTS is ``*``, ``N``, ``LOW-HIGH`` or a comma list of those.

    IPv6 is written in brackets (``[::1]/128:443``) so the port cannot be mistaken for a group."""

    network: IPNetwork
    ports: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> ExitRule:
        try:
            return cls(*_parse_rule(text.strip()))
        except ValueError as exc:
            raise ConfigError(f"exit rule {text!r} is invalid: {exc}; write CIDR:PORTS, e.g. "
                              "127.0.0.1/32:8000-8100, [::1]/128:443 or 10.0.0.0/8:22,80") from exc

    def matches(self, address: IPAddress, port: int) -> bool:
        return (address.version == self.network.version and address in self.network
                and any(low <= port <= high for low, high in self.ports))


def _parse_rule(text: str) -> tuple[IPNetwork, tuple[tuple[int, int], ...]]:
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        prefix, colon, ports = rest.rpartition(":")
        if not bracket or not colon or prefix[:1] not in ("", "/"):
            raise ValueError("expected [IPv6]/PREFIX:PORTS")
        cidr = inside + prefix
    else:
        cidr, colon, ports = text.rpartition(":")
        if not colon:
            raise ValueError("missing :PORTS")
        if ":" in cidr and "/" not in cidr:
            raise ValueError("write an IPv6 rule as [ADDRESS]/PREFIX:PORTS")
    network = ipaddress.ip_network(cidr, strict=False)
    ranges = []
    for part in ports.split(","):
        match = _PORTS.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{part!r} is not a port, LOW-HIGH range or *")
        low, high = (int(match[1]), int(match[2] or match[1])) if match[1] else FULL_RANGE
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port range {part!r} is not within 1-65535")
        ranges.append((low, high))
    return network, tuple(ranges)


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


def classify(address: IPAddress) -> tuple[str, bool] | None:
    """``(reason, local)`` if the default policy refuses ``address``, None for public unicast."""
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


class ExitPolicy:
    """Which targets this exit connects to: public unicast on any port, plus what ``allow`` admits.

    ``allow_private`` opens every range that holds real hosts (private, loopback, link-local, ...)
    for closed test or LAN meshes; unspecified, multicast and reserved targets stay refused."""

    def __init__(self, allow: Iterable[ExitRule] = (), *, allow_private: bool = False) -> None:
        self.allow = tuple(allow)
        self.allow_private = allow_private

    @classmethod
    def from_rules(cls, rules: Iterable[str], *, allow_private: bool = False) -> ExitPolicy:
        return cls((ExitRule.parse(rule) for rule in rules), allow_private=allow_private)

    def check(self, address: IPAddress, port: int) -> None:
        """Raise ``ExitPolicyError`` unless this exit may connect to ``address:port``."""
        if not 1 <= port <= 65535:
            raise ExitPolicyError(f"exit refuses port {port}: a target port must be within 1-65535")
        target = address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            target = address.ipv4_mapped  # the same socket target: let IPv4 rules apply
        if any(rule.matches(target, port) for rule in self.allow):
            return
        found = classify(address)
        if found is None or (self.allow_private and found[1]):
            return
        bare = type(target)(int(target))  # a rule has no IPv6 scope (%eth0)
        host = f"[{bare}]" if bare.version == 6 else str(bare)
        rule = f"{host}/{bare.max_prefixlen}:{port}"
        raise ExitPolicyError(f"exit refuses {address} port {port}: {found[0]} address; to allow it, "
                              f"start the exit with --exit-allow {rule}")

    def summary_ports(self) -> tuple[tuple[int, int], ...]:
        """Ports to publish in the descriptor: all, since public addresses are open on any port."""
        return (FULL_RANGE,)


async def _system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos
            if info[0] in (socket.AF_INET, socket.AF_INET6)]


async def resolve_and_check(policy: ExitPolicy, host: str, port: int, *,
                            resolver: Resolver | None = None) -> list[IPAddress]:
    """Resolve ``host`` here and check every answer; one forbidden answer refuses them all.

    Returns the distinct addresses in resolver order. An IP literal is checked without resolving."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = list(await (resolver or _system_resolver)(host, port))
        except (OSError, UnicodeError, ValueError) as exc:
            raise StreamError(f"cannot resolve {host!r}: {exc}", "resolve_failed") from exc
    if not addresses:
        raise StreamError(f"{host!r} has no addresses", "resolve_failed")
    for address in addresses:
        policy.check(address, port)
    return list(dict.fromkeys(addresses))


async def open_exit_connection(policy: ExitPolicy, host: str, port: int, *, timeout: float = 10.0,
                               resolver: Resolver | None = None
                               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the checked addresses of ``host`` in order, never re-resolving the name.

    Resolution and each connection attempt get ``timeout`` seconds."""
    try:
        addresses = await asyncio.wait_for(resolve_and_check(policy, host, port, resolver=resolver), timeout)
    except TimeoutError as exc:
        raise StreamError(f"resolving {host!r} timed out", "resolve_failed") from exc
    failure: StreamError | None = None
    for address in addresses:
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(address), port), timeout)
        except TimeoutError as exc:
            failure = StreamError(f"connecting to {address} port {port} timed out", "timeout")
            failure.__cause__ = exc
        except OSError as exc:
            failure = StreamError(f"{address} port {port} refused the connection", "connect_refused")
            failure.__cause__ = exc
    assert failure is not None  # resolve_and_check returns at least one address
    raise failure


_END_REASONS = {"exit_policy": EndReason.EXIT_POLICY, "resolve_failed": EndReason.RESOLVE_FAILED,
                "connect_refused": EndReason.CONNECT_REFUSED, "timeout": EndReason.TIMEOUT}


def end_reason_for(exc: BaseException) -> EndReason:
    """The END reason that tells the client what went wrong, without leaking more."""
    if isinstance(exc, ExitPolicyError):
        return EndReason.EXIT_POLICY
    if isinstance(exc, StreamError):
        return _END_REASONS.get(exc.reason, EndReason.MISC)
    if isinstance(exc, TimeoutError):
        return EndReason.TIMEOUT
    return EndReason.MISC
