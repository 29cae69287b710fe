"""Exit policy: an exit must never become an open door into the networks around it.

By default an exit reaches any port of globally routable unicast addresses only: the ranges of
``zmesh.netaddr`` (loopback, private, link-local, multicast, reserved, ..., also inside IPv6) are
refused unless an explicit ``--exit-allow CIDR:PORTS`` rule admits them.

Names are resolved *at the exit*, every answer is checked, and the connection goes to the checked
address itself, so DNS cannot re-point it afterwards (no rebinding, no mixed answers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from zmesh.cells import EndReason
from zmesh.errors import ConfigError, ExitPolicyError, StreamError
from zmesh.netaddr import IPAddress, IPNetwork, refusal

from .resolve import Resolver, resolve

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
        why = refusal(address, allow_private=self.allow_private)
        if why is None:
            return
        bare = type(target)(int(target))  # a rule has no IPv6 scope (%eth0)
        host = f"[{bare}]" if bare.version == 6 else str(bare)
        rule = f"{host}/{bare.max_prefixlen}:{port}"
        raise ExitPolicyError(f"exit refuses {address} port {port}: {why} address; to allow it, "
                              f"start the exit with --exit-allow {rule}")

    def summary_ports(self) -> tuple[tuple[int, int], ...]:
        """Ports to publish in the descriptor: all, since public addresses are open on any port."""
        return (FULL_RANGE,)


async def resolve_and_check(policy: ExitPolicy, host: str, port: int, *,
                            resolver: Resolver | None = None) -> list[IPAddress]:
    """Resolve ``host`` here and check every answer; one forbidden answer refuses them all.

    Returns the distinct addresses in resolver order. An IP literal is checked without resolving."""
    try:
        addresses = await resolve(host, port, resolver)
    except OSError as exc:
        raise StreamError(str(exc), EndReason.RESOLVE_FAILED) from exc
    for address in addresses:
        policy.check(address, port)
    return addresses


async def open_exit_connection(policy: ExitPolicy, host: str, port: int, *, timeout: float = 10.0,
                               resolver: Resolver | None = None
                               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the checked addresses of ``host`` in order, never re-resolving the name.

    Resolution and each connection attempt get ``timeout`` seconds."""
    try:
        addresses = await asyncio.wait_for(resolve_and_check(policy, host, port, resolver=resolver), timeout)
    except TimeoutError as exc:
        raise StreamError(f"resolving {host!r} timed out", EndReason.RESOLVE_FAILED) from exc
    failure: StreamError | None = None
    for address in addresses:
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(address), port), timeout)
        except TimeoutError as exc:
            failure = StreamError(f"connecting to {address} port {port} timed out", EndReason.TIMEOUT)
            failure.__cause__ = exc
        except OSError as exc:
            failure = StreamError(f"{address} port {port} refused the connection", EndReason.CONNECT_REFUSED)
            failure.__cause__ = exc
    assert failure is not None  # resolve_and_check returns at least one address
    raise failure


# What an exit may tell the client about its target; any other reason (a DESTROYED from under it, a
# PROTOCOL) says nothing about the target and goes out as MISC.
_TARGET_REASONS = frozenset({EndReason.EXIT_POLICY, EndReason.RESOLVE_FAILED, EndReason.CONNECT_REFUSED,
                             EndReason.TIMEOUT})


def end_reason_for(exc: BaseException) -> EndReason:
    """The END reason that tells the client what went wrong, without leaking more."""
    if isinstance(exc, ExitPolicyError):
        return EndReason.EXIT_POLICY
    if isinstance(exc, StreamError):
        return exc.reason if exc.reason in _TARGET_REASONS else EndReason.MISC
    if isinstance(exc, TimeoutError):
        return EndReason.TIMEOUT
    return EndReason.MISC
