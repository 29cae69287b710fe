"""Exit policy: an exit must never become an open door into the networks around it.

By default an exit reaches only globally routable unicast addresses. Loopback, private (RFC 1918,
fc00::/7), link-local, shared (100.64/10), multicast, unspecified, reserved and documentation
ranges are refused — including when they hide inside IPv6 (IPv4-mapped, 6to4, Teredo) — unless an
explicit ``--exit-allow CIDR:PORTS`` rule admits them. Names are resolved *at the exit* and every
answer is checked before connecting to the checked address itself, so DNS cannot re-point the
connection afterwards (no rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from zmesh.cells import EndReason
from zmesh.errors import ConfigError, ExitPolicyError, StreamError, ZmeshError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


@dataclass(frozen=True, slots=True)
class ExitRule:
    """``CIDR:PORTS`` where PORTS is ``*``, ``N``, ``LOW-HIGH`` or a comma list of those."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> ExitRule:
        cidr, sep, ports = text.strip().rpartition(":")
        try:
            if not sep:
                raise ValueError("missing :PORTS")
            network = ipaddress.ip_network(cidr.replace("[", "").replace("]", ""), strict=False)
            ranges = []
            for part in ports.split(","):
                low, _, high = part.partition("-")
                if part == "*":
                    low, high = "1", "65535"
                lo, hi = int(low), int(high or low)
                if not 1 <= lo <= hi <= 65535:
                    raise ValueError(f"port range {part!r} is not within 1-65535")
                ranges.append((lo, hi))
        except ValueError as exc:
            raise ConfigError(f"exit rule {text!r} is invalid ({exc}); use CIDR:PORT, CIDR:LOW-HIGH "
                              "or CIDR:*, e.g. 127.0.0.1/32:8000-8100") from exc
        return cls(network, tuple(ranges))

    def matches(self, address: IPAddress, port: int) -> bool:
        return address.version == self.network.version and address in self.network and \
            any(lo <= port <= hi for lo, hi in self.ports)


def _embedded(address: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address carried inside an IPv6 one."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour, address.teredo and address.teredo[1]):
            if inner:
                found.append(inner)
    return found


def why_forbidden(address: IPAddress) -> str | None:
    """A reason the default policy refuses ``address``, or None if it is public unicast."""
    for candidate in _embedded(address):
        if candidate.is_loopback:
            return "loopback"
        if candidate.is_link_local:
            return "link-local"
        if candidate.is_multicast:
            return "multicast"
        if candidate.is_unspecified:
            return "unspecified"
        if candidate.is_private or not candidate.is_global:
            return "private or reserved"
    return None


class ExitPolicy:
    def __init__(self, allow: Iterable[ExitRule] = ()) -> None:
        self.allow = tuple(allow)

    @classmethod
    def from_rules(cls, rules: Iterable[str]) -> ExitPolicy:
        return cls(ExitRule.parse(rule) for rule in rules)

    def check(self, address: IPAddress, port: int) -> None:
        """Raise ``ExitPolicyError`` unless this exit may connect to ``address:port``."""
        if not 1 <= port <= 65535:
            raise ExitPolicyError(f"port {port} is not a valid target port")
        if any(rule.matches(address, port) for rule in self.allow):
            return
        reason = why_forbidden(address)
        if reason is not None:
            raise ExitPolicyError(f"exit refuses {address} port {port}: {reason} address "
                                  f"(allow it with --exit-allow {address}/{address.max_prefixlen}:{port})")

    def summary_ports(self) -> tuple[tuple[int, int], ...]:
        """Ports to publish in the descriptor: any port, since the address check is per target."""
        return ((1, 65535),)


async def _system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


async def resolve_and_check(policy: ExitPolicy, host: str, port: int, *,
                            resolver: Resolver | None = None) -> list[IPAddress]:
    """Resolve ``host`` here and check every answer; one forbidden answer refuses them all."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await (resolver or _system_resolver)(host, port)
        except (OSError, UnicodeError) as exc:
            raise StreamError(f"cannot resolve {host}", "resolve_failed") from exc
    if not addresses:
        raise StreamError(f"{host} has no addresses", "resolve_failed")
    for address in addresses:
        policy.check(address, port)
    return list(dict.fromkeys(addresses))


async def open_exit_connection(policy: ExitPolicy, host: str, port: int, *, timeout: float = 10.0,
                               resolver: Resolver | None = None
                               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the checked addresses of ``host`` in order (never re-resolving the name)."""
    last: Exception | None = None
    for address in await resolve_and_check(policy, host, port, resolver=resolver):
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(address), port), timeout)
        except TimeoutError as exc:
            last = StreamError(f"connecting to {host}:{port} timed out", "timeout")
            last.__cause__ = exc
        except OSError as exc:
            last = StreamError(f"{host}:{port} refused the connection", "connect_refused")
            last.__cause__ = exc
    assert last is not None
    raise last


_REASONS = {"resolve_failed": EndReason.RESOLVE_FAILED, "connect_refused": EndReason.CONNECT_REFUSED,
            "timeout": EndReason.TIMEOUT, "exit_policy": EndReason.EXIT_POLICY}


def end_reason_for(exc: ZmeshError) -> EndReason:
    """The END reason that tells the client what went wrong, without leaking more."""
    if isinstance(exc, ExitPolicyError):
        return EndReason.EXIT_POLICY
    return _REASONS.get(getattr(exc, "reason", ""), EndReason.MISC)
