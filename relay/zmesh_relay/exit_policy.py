"""Exit policy: an exit must never become an open door into the networks around it, nor a spam relay.

Two layers, both checked *at the exit* on every resolved address (docs/exits.md):

1. Addresses. By default an exit reaches globally routable unicast addresses only: the ranges of
   ``zmesh.netaddr`` (loopback, private, link-local, multicast, reserved, ..., also inside IPv6) are
   refused unless an explicit ``--exit-allow CIDR:PORTS`` rule admits them.
2. Ports. The operator's ``exit.policy`` rules (``accept *:25``, ``reject 10.0.0.0/8:*``), first match
   wins, followed by ``DEFAULT_POLICY``: Tor's default exit policy in spirit, refusing mail submission
   and a short list of abuse-prone ports (``DEFAULT_REJECTS``), accepting the rest. A policy rule never
   opens an address the first layer refuses.

Names are resolved at the exit, every answer is checked, and the connection goes to the checked
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
from .upstream import Upstream, connect_through

FULL_RANGE = (1, 65535)
MAX_SUMMARY_RANGES = 64  # what a descriptor may carry (zmesh.descriptor)
_PORTS = re.compile(r"\*|([0-9]{1,5})(?:-([0-9]{1,5}))?")
PortRanges = tuple[tuple[int, int], ...]

# Refused by default, with the reason an operator would give an abuse desk. Tor's default exit policy
# (policies.c, DEFAULT_EXIT_POLICY) refuses the same ports.
DEFAULT_REJECTS: tuple[tuple[str, str], ...] = (
    ("25", "SMTP: spam sent straight to mail servers"),
    ("119", "NNTP: Usenet spam"),
    ("135-139", "Windows RPC and NetBIOS: worm propagation"),
    ("445", "SMB: worm propagation and file-share attacks"),
    ("465", "SMTP submission over TLS: spam through hijacked accounts"),
    ("563", "NNTP over TLS: Usenet spam"),
    ("587", "mail submission: spam through hijacked accounts"),
    ("1214", "Kazaa file sharing: copyright complaints"),
    ("4661-4666", "eDonkey file sharing: copyright complaints"),
    ("6346-6429", "Gnutella file sharing: copyright complaints"),
    ("6699", "WinMX file sharing: copyright complaints"),
    ("6881-6999", "BitTorrent: copyright complaints and bulk traffic"),
)


def _parse_ports(text: str) -> PortRanges:
    ranges = []
    for part in text.split(","):
        match = _PORTS.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{part!r} is not a port, LOW-HIGH range or *")
        low, high = (int(match[1]), int(match[2] or match[1])) if match[1] else FULL_RANGE
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port range {part!r} is not within 1-65535")
        ranges.append((low, high))
    return tuple(ranges)


def _parse_target(text: str, *, any_address: bool) -> tuple[IPNetwork | None, PortRanges]:
    """``ADDRESS:PORTS``; ADDRESS is a CIDR (IPv6 in brackets) or, where ``any_address``, ``*``."""
    if any_address and text.startswith("*"):
        if text[1:2] != ":":
            raise ValueError("expected *:PORTS")
        return None, _parse_ports(text[2:])
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
            raise ValueError("write an IPv6 address as [ADDRESS]/PREFIX:PORTS")
    return ipaddress.ip_network(cidr, strict=False), _parse_ports(ports)


def _in(port: int, ranges: PortRanges) -> bool:
    return any(low <= port <= high for low, high in ranges)


@dataclass(frozen=True, slots=True)
class ExitRule:
    """``CIDR:PORTS`` where PORTS is ``*``, ``N``, ``LOW-HIGH`` or a comma list of those.

    IPv6 is written in brackets (``[::1]/128:443``) so the port cannot be mistaken for a group."""

    network: IPNetwork
    ports: PortRanges

    @classmethod
    def parse(cls, text: str) -> ExitRule:
        try:
            network, ports = _parse_target(text.strip(), any_address=False)
        except ValueError as exc:
            raise ConfigError(f"exit rule {text!r} is invalid: {exc}; write CIDR:PORTS, e.g. "
                              "127.0.0.1/32:8000-8100, [::1]/128:443 or 10.0.0.0/8:22,80") from exc
        assert network is not None
        return cls(network, ports)

    def matches(self, address: IPAddress, port: int) -> bool:
        return address.version == self.network.version and address in self.network and _in(port, self.ports)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``exit.policy`` rule: ``accept|reject ADDRESS:PORTS``, ADDRESS ``*`` or a CIDR.

    ``origin`` says where the rule came from, for the refusal's message."""

    accept: bool
    network: IPNetwork | None  # None: every address
    ports: PortRanges
    origin: str = "exit.policy"

    @classmethod
    def parse(cls, text: str, origin: str = "exit.policy") -> PolicyRule:
        action, _, target = text.strip().partition(" ")
        try:
            if action.lower() not in ("accept", "reject"):
                raise ValueError("a rule starts with accept or reject")
            network, ports = _parse_target(target.strip(), any_address=True)
        except ValueError as exc:
            raise ConfigError(f"exit policy rule {text!r} is invalid: {exc}; write accept|reject ADDRESS:PORTS, "
                              "e.g. 'accept *:25', 'reject 10.0.0.0/8:*' or 'reject [2001:db8::]/32:80,443'") from exc
        return cls(action.lower() == "accept", network, ports, origin)

    def matches(self, address: IPAddress, port: int) -> bool:
        if self.network is not None and (address.version != self.network.version or address not in self.network):
            return False
        return _in(port, self.ports)

    def __str__(self) -> str:
        where = "*" if self.network is None else (
            f"[{self.network.network_address}]/{self.network.prefixlen}" if self.network.version == 6
            else str(self.network))
        ports = ",".join("*" if (low, high) == FULL_RANGE else str(low) if low == high else f"{low}-{high}"
                         for low, high in self.ports)
        return f"{'accept' if self.accept else 'reject'} {where}:{ports}"


DEFAULT_POLICY: tuple[PolicyRule, ...] = (
    *(PolicyRule.parse(f"reject *:{ports}", f"the default policy: {why}") for ports, why in DEFAULT_REJECTS),
    PolicyRule.parse("accept *:*", "the default policy"),
)


class ExitPolicy:
    """Which targets this exit connects to: the address layer (public unicast, plus what ``allow``
    admits), then the port rules (``rules``, then ``DEFAULT_POLICY``; the first match decides).

    ``allow_private`` opens every range that holds real hosts (private, loopback, link-local, ...)
    for closed test or LAN meshes; unspecified, multicast and reserved targets stay refused."""

    def __init__(self, allow: Iterable[ExitRule] = (), *, rules: Iterable[PolicyRule] = (),
                 allow_private: bool = False) -> None:
        self.allow = tuple(allow)
        self.rules = (*rules, *DEFAULT_POLICY)
        self.allow_private = allow_private
        self._summary = self._summarise()

    @classmethod
    def from_rules(cls, allow: Iterable[str], *, policy: Iterable[str] = (), allow_private: bool = False) -> ExitPolicy:
        """From ``--exit-allow`` rules (``CIDR:PORTS``) and ``exit.policy`` rules (``accept *:25``)."""
        return cls((ExitRule.parse(rule) for rule in allow), rules=(PolicyRule.parse(rule) for rule in policy),
                   allow_private=allow_private)

    def check(self, address: IPAddress, port: int) -> None:
        """Raise ``ExitPolicyError`` unless this exit may connect to ``address:port``."""
        if not 1 <= port <= 65535:
            raise ExitPolicyError(f"exit refuses port {port}: a target port must be within 1-65535")
        target = address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            target = address.ipv4_mapped  # the same socket target: let IPv4 rules apply
        self._check_address(address, target, port)
        rule = next(rule for rule in self.rules if rule.matches(target, port))  # DEFAULT_POLICY ends in *:*
        if not rule.accept:
            raise ExitPolicyError(f"exit refuses {address} port {port}: rule '{rule}' of {rule.origin}; "
                                  f"to allow it, start the exit with --exit-policy 'accept *:{port}'")

    def _check_address(self, address: IPAddress, target: IPAddress, port: int) -> None:
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

    def summary_ports(self) -> PortRanges:
        """Ports to publish in the descriptor: those the ``*`` rules accept, as merged ranges.

        Coarse, like Tor's microdescriptor summaries: rules naming particular networks are left
        out (a client rarely knows the address a name resolves to at the exit), so they can make
        the exit refuse a stream its summary admits, never the other way round for ``*`` rules."""
        return self._summary

    def _summarise(self) -> PortRanges:
        everywhere = [rule for rule in self.rules if rule.network is None]
        # Between two consecutive cuts every port meets the same first * rule.
        cuts = sorted({1, 65536} | {edge for rule in everywhere for low, high in rule.ports
                                    for edge in (low, high + 1)})
        ranges: list[tuple[int, int]] = []
        for low, after in zip(cuts, cuts[1:], strict=False):
            if not next(rule for rule in everywhere if _in(low, rule.ports)).accept:
                continue
            if ranges and ranges[-1][1] == low - 1:
                ranges[-1] = (ranges[-1][0], after - 1)
            else:
                ranges.append((low, after - 1))
        if len(ranges) > MAX_SUMMARY_RANGES:
            raise ConfigError(f"exit.policy accepts {len(ranges)} separate port ranges; a descriptor carries at "
                              f"most {MAX_SUMMARY_RANGES}: merge neighbouring rules")
        return tuple(ranges)


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
                               resolver: Resolver | None = None, upstream: Upstream | None = None
                               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the checked addresses of ``host`` in order, never re-resolving the name; with
    ``upstream``, through that HTTP CONNECT proxy (to the checked address, not the name).

    Resolution and each connection attempt get ``timeout`` seconds. An upstream that fails ends
    the attempt at once with ``UPSTREAM_FAILED``: the next address would go through it too."""
    try:
        addresses = await asyncio.wait_for(resolve_and_check(policy, host, port, resolver=resolver), timeout)
    except TimeoutError as exc:
        raise StreamError(f"resolving {host!r} timed out", EndReason.RESOLVE_FAILED) from exc
    failure: StreamError | None = None
    for address in addresses:
        try:
            if upstream is not None:
                return await connect_through(upstream, address, port, timeout)
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
                             EndReason.TIMEOUT, EndReason.UPSTREAM_FAILED})


def end_reason_for(exc: BaseException) -> EndReason:
    """The END reason that tells the client what went wrong, without leaking more."""
    if isinstance(exc, ExitPolicyError):
        return EndReason.EXIT_POLICY
    if isinstance(exc, StreamError):
        return exc.reason if exc.reason in _TARGET_REASONS else EndReason.MISC
    if isinstance(exc, TimeoutError):
        return EndReason.TIMEOUT
    return EndReason.MISC
