"""Configuration: ``zmesh.toml`` < ``ZMESH_*`` environment < command-line flags.

Every setting has a dotted name (``relay.listen``), a type and a default. The file uses the
sections as tables (``[relay] listen = "127.0.0.1:9001"``), the environment upper-cases the name
with underscores (``ZMESH_RELAY_LISTEN``), and flags override both. Everything is validated at
start, and an error names the bad key and where it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmesh.aio.rtc import ChannelOptions, IceServer, RtcOptions
from zmesh.aio.transport import check_redial_after, check_transport
from zmesh.circuit_plan import CircuitPolicy
from zmesh.consensus_view import AuthorityRef, check_authorities
from zmesh.cover import DEFAULT_KEEPALIVE, PaddingPolicy, parse_cover
from zmesh.descriptor import EXIT_KINDS, MAX_FAMILY
from zmesh.errors import ConfigError, ProtocolError
from zmesh.identity import PeerId
from zmesh.limits import PeerTiers
from zmesh.netaddr import LINK_PATH, LinkAddress, check_link_path
from zmesh.node import NodeLimits
from zmesh.onionkeys import DEFAULT_ONION_KEY_GRACE, DEFAULT_ONION_KEY_LIFETIME, check_schedule
from zmesh.setuppad import SetupSpec

from .exit_policy import ExitRule, PolicyRule
from .socks5 import SocksLimits
from .upstream import Upstream
from .wslink import DIAL_HEADERS


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT (port 0 picks a free one)")
    return value


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value.rstrip("/")


def _urls(value: str) -> str:
    """One URL, or several separated by commas: servers sharing one directory (tried in turn)."""
    return ",".join(_url(url.strip()) for url in value.split(","))


def _redis_url(value: str) -> str:
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected redis://HOST:PORT/DB (empty: keep everything in memory)")
    return value


def _hops(value: int) -> int:
    if not 2 <= value <= 8:
        raise ValueError("must be 2..8")
    return value


def _country(value: str) -> str:
    if value and (len(value) != 2 or not value.isascii() or not value.isalpha()):
        raise ValueError("must be a two-letter country code or empty")
    return value.upper()


def _upstream(value: str) -> str:
    return str(Upstream.parse(value)) if value else ""


def _exit_kind(value: str) -> str:
    if value and value not in EXIT_KINDS:
        raise ValueError(f"must be one of {', '.join(EXIT_KINDS)} or empty (any)")
    return value


def _countries(value: list) -> tuple[str, ...]:
    if not all(isinstance(code, str) and code for code in value):
        raise ValueError("each entry must be a two-letter country code")
    return tuple(_country(code) for code in value)


def _family(value: list) -> tuple[PeerId, ...]:
    """The operator's other relays, as PeerId text (each of them must list this relay too)."""
    if len(value) > MAX_FAMILY:
        raise ValueError(f"at most {MAX_FAMILY} relays")
    if not all(isinstance(text, str) for text in value):
        raise ValueError("each entry must be PeerId text")
    family = tuple(PeerId.from_text(text) for text in value)
    if len(set(family)) != len(family):
        raise ValueError("a PeerId is listed twice")
    return family


def _forwards(value: list) -> tuple[tuple[int, str, int], ...]:
    """``[VPORT=]HOST:PORT`` entries (Tor's HiddenServicePort): BEGINs on VPORT (default: PORT) go to
    HOST:PORT. Each VPORT once."""
    forwards = []
    for entry in value:
        if not isinstance(entry, str):
            raise ValueError("each entry must be [VPORT=]HOST:PORT")
        vport_text, _, target = entry.rpartition("=")
        host, port = split_host_port(_host_port(target))
        vport = int(vport_text) if vport_text.isdigit() else port if not vport_text else -1
        if not 1 <= vport <= 65535 or not 1 <= port <= 65535:
            raise ValueError(f"{entry!r}: ports must be 1..65535 (as [VPORT=]HOST:PORT)")
        forwards.append((vport, host, port))
    if len({vport for vport, _, _ in forwards}) != len(forwards):
        raise ValueError("a virtual port is forwarded twice")
    return tuple(forwards)


def _client_keys(value: list) -> list[str]:
    """X25519 public keys of authorised clients, 64 hex digits each (a client's ``<key file>.pub``)."""
    keys = []
    for entry in value:
        if not isinstance(entry, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", entry.strip()):
            raise ValueError(f"{entry!r}: a client key is 64 hex digits (the client's client_auth_key .pub file)")
        keys.append(entry.strip().lower())
    if len(set(keys)) != len(keys):
        raise ValueError("a client key is listed twice")
    return keys


def _intro_lifetime(value: float) -> float:
    if not 60 <= value <= 7 * 86400:
        raise ValueError("must be 60 seconds to a week")
    return value


def _intro_points(value: int) -> int:
    if not 1 <= value <= 10:
        raise ValueError("must be 1..10")
    return value


def _level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be debug, info, warning or error")
    return value.upper()


def _transport(value: str) -> str:
    return check_transport(value)


def _peer_limit(value: str) -> str:
    PeerTiers.parse(value)  # a ConfigError names what is wrong
    return value


def _at_least_one(value: int | float) -> int | float:
    if not value >= 1:
        raise ValueError("must be at least 1")
    return value


def _ice_servers(value: list) -> tuple[IceServer, ...]:
    """``["stun:host:3478", {urls = ["turn:host"], username = "u", credential = "p"}]``: credentials
    only in the TOML file (tables), never in flags or the environment, where other users can read them."""
    servers = []
    for item in value:
        if isinstance(item, str):
            servers.append(IceServer((item,)))
        elif isinstance(item, dict) and set(item) <= {"urls", "username", "credential"}:
            urls = item.get("urls")
            servers.append(IceServer(tuple(urls) if isinstance(urls, list) else (urls,),
                                     item.get("username"), item.get("credential")))
        else:
            raise ValueError("each ICE server is a URL or a table with urls, username, credential")
    return tuple(servers)


def _channels(value: list) -> tuple[ChannelOptions, ...]:
    """``[{label = "data"}, {label = "fec", ordered = false, max_retransmits = 0}]``."""
    known = {"label", "ordered", "max_retransmits", "max_packet_lifetime", "negotiated_id"}
    if not all(isinstance(item, dict) and set(item) <= known for item in value):
        raise ValueError(f"each DataChannel is a table with some of: {', '.join(sorted(known))}")
    channels = tuple(ChannelOptions(**item) for item in value)
    RtcOptions(channels=channels)
    return channels


def _ice_policy(value: str) -> str:
    return RtcOptions(ice_policy=value).ice_policy  # RtcOptions owns the rule


def _webrtc_timeout(value: float) -> float:
    return RtcOptions(timeout=value).timeout


_SOCKS = SocksLimits()


def _socks_limit(field: str) -> Callable[[Any], Any]:
    return lambda value: getattr(SocksLimits(**{field: value}), field)  # SocksLimits owns the rules


_CIRCUITS = CircuitPolicy()


def _circuit_policy(field: str) -> Callable[[Any], Any]:
    return lambda value: getattr(CircuitPolicy(**{field: value}), field)  # CircuitPolicy owns the rules


def _optional_host_port(value: str) -> str:
    return _host_port(value) if value else value


def _dial_timeout(value: float) -> float:
    if not 0 < value <= 300:
        raise ValueError("must be more than 0 and at most 300 seconds")
    return value


def _listing_wait(value: float) -> float:
    if not 0 <= value <= 300:
        raise ValueError("must be 0..300 seconds")
    return value


def _positive(value: int) -> int:
    if value < 1:
        raise ConfigError(f"must be at least 1, got {value}")
    return value


def _ws_path(value: str) -> str:
    if value == "/healthz":
        raise ValueError("/healthz is the relay's health check, not a link path")
    return check_link_path(value, ValueError)


def _link_address(value: str) -> str:
    if value:
        try:
            LinkAddress.parse(value)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from exc
    return value


def _cc_window(value: int) -> int:
    if not (value == 0 or 64 <= value <= 65536):
        raise ValueError("must be 0 (fixed windows) or 64..65536 cells")
    return value


def _cover(value: str) -> str:
    parse_cover(value)  # zmesh.cover owns the grammar; a ConfigError says what is wrong
    return value.strip().lower()


def _keepalive_padding(value: float) -> float:
    PaddingPolicy.of(value, "off")
    return value


def _jitter(value: float) -> float:
    return PaddingPolicy(jitter=value).jitter  # PaddingPolicy owns the rule


def _setup_padding(value: int) -> int:
    if value:
        SetupSpec(cells=value)  # SetupSpec owns the range
    return value


def _padding_max_rate(value: float) -> float:
    return NodeLimits(padding_max_rate=value).padding_max_rate  # NodeLimits owns the rule


def _padding_max_percent(value: int) -> int:
    return NodeLimits(padding_max_percent=value).padding_max_percent


_FORBIDDEN_HEADERS = {"host", "upgrade", "connection", "content-length", "transfer-encoding"}


def _ws_headers(value: list) -> dict[str, str]:
    """``["User-Agent: …", "Accept-Language: en"]``: what a WebSocket dial sends (besides the upgrade's own)."""
    if len(value) > 16:
        raise ValueError("at most 16 headers")
    headers: dict[str, str] = {}
    for item in value:
        name, sep, text = str(item).partition(":")
        name, text = name.strip(), text.strip()
        if (not sep or not name or not name.isascii() or not all(c.isalnum() or c in "-_" for c in name)
                or not text.isascii() or not text.isprintable() or name.lower() in _FORBIDDEN_HEADERS
                or name.lower().startswith("sec-websocket")):
            raise ValueError(f"{item!r:.60} is not a 'Name: value' header a dial may set")
        headers[name] = text
    return headers


def _build_timeout(value: float) -> float:
    if not 0 < value <= 600:
        raise ValueError("must be more than 0 and at most 600 seconds")
    return value


def _exit_rules(value: list) -> list:
    for rule in value:
        if not isinstance(rule, str):
            raise ValueError("each rule is a CIDR:PORTS string")
        ExitRule.parse(rule)  # the exit policy owns its grammar
    return value


def _exit_policy(value: list) -> list:
    for rule in value:
        if not isinstance(rule, str):
            raise ValueError("each rule is an 'accept|reject ADDRESS:PORTS' string")
        PolicyRule.parse(rule)  # the exit policy owns its grammar (docs/exits.md)
    return value


def _authorities(value: list) -> tuple[AuthorityRef, ...]:
    """Directory authorities as URL#FINGERPRINT strings or {url, fingerprint} tables."""
    refs = []
    for item in value:
        if isinstance(item, str):
            refs.append(AuthorityRef.parse(item))
        elif isinstance(item, dict) and set(item) == {"url", "fingerprint"}:
            refs.append(AuthorityRef.of(item["url"], item["fingerprint"]))
        else:
            raise ValueError("each authority is URL#FINGERPRINT or {url = ..., fingerprint = ...}")
    return check_authorities(refs)


def _vote_interval(value: int) -> int:
    if value != 0 and not 2 <= value <= 24 * 3600:
        raise ValueError("expected 2..86400 seconds (0: 300 on a private test network, else 3600)")
    return value


@dataclass(frozen=True)
class Setting:
    kind: type
    default: Any
    check: Callable[[Any], Any] | None = None
    help: str = ""
    separator: str = ","  # between the items of a list given as one string (the environment)


_NODE = NodeLimits()  # the core's defaults are the relay's

SETTINGS: dict[str, Setting] = {
    "core.hops": Setting(int, 3, _hops, "relays per circuit"),
    "core.build_timeout": Setting(float, 30.0, _build_timeout, "seconds to build one circuit"),
    "core.cc_max_window": Setting(int, _NODE.cc_max_window, _cc_window,
                                  "congestion window cap in cells, offered and granted per circuit "
                                  "(docs/protocol.md §10); 0: fixed windows"),
    "transport.kind": Setting(str, "auto", _transport, "auto (WebRTC, else WebSocket), webrtc, websocket"),
    "transport.webrtc_timeout": Setting(float, 10.0, _webrtc_timeout, "seconds for WebRTC to open before a fallback"),
    "transport.dial_timeout": Setting(float, 10.0, _dial_timeout,
                                      "seconds for a whole WebSocket dial (resolve, connect, upgrade)"),
    "transport.redial_after": Setting(float, 2.0, check_redial_after,
                                      "seconds before a relay whose dial failed is dialed again"),
    "transport.ice_servers": Setting(list, [], _ice_servers, "STUN/TURN servers (credentials: TOML tables only)"),
    "transport.ice_policy": Setting(str, "all", _ice_policy, "all, or relay: TURN only (hides addresses)"),
    "transport.channels": Setting(list, [{"label": "data"}], _channels, "DataChannels; the first reliable, ordered"),
    "transport.ws_headers": Setting(list, [f"{k}: {v}" for k, v in DIAL_HEADERS.items()], _ws_headers,
                                    "'Name: value' headers a WebSocket dial sends (default: a common browser's "
                                    "User-Agent, not aiohttp's); '|' between headers in the environment",
                                    separator="|"),
    "signaling.url": Setting(str, "http://127.0.0.1:8080", _urls,
                             "signal/directory server URL, or several (comma-separated) sharing one Redis"),
    "signaling.redis": Setting(str, "", _redis_url, "`zmesh signal`: share state with other servers on this Redis"),
    "signaling.listen": Setting(str, "127.0.0.1:8080", _host_port, "where `zmesh signal` listens"),
    "signaling.web_root": Setting(str, "", None, "folder served at / (default: the repository's web/)"),
    "signaling.max_relays_per_source": Setting(int, 8, _positive, "peers one address may publish to `zmesh signal`"),
    "relay.listen": Setting(str, "127.0.0.1:0", _host_port, "where a relay accepts links"),
    "relay.advertise": Setting(str, "", _link_address,
                               "the link address to publish, e.g. wss://relay.example.org/v1/link (default: "
                               "the listening one; needed on 0.0.0.0 or behind a TLS proxy)"),
    "relay.ws_path": Setting(str, LINK_PATH, _ws_path,
                             "the path links are accepted on and published with (e.g. one an ordinary site would "
                             "use); older descriptors without a path mean /v1/link"),
    "relay.tls_cert": Setting(str, "", None, "PEM certificate (chain) to serve links over TLS; published pinned"),
    "relay.tls_key": Setting(str, "", None, "PEM private key of relay.tls_cert"),
    "relay.data_dir": Setting(str, "~/.zmesh/relay", None, "identity key folder (created 0700, key 0600)"),
    "relay.exit": Setting(bool, False, None, "act as an exit"),
    "relay.country": Setting(str, "", _country, "advertised country code"),
    "relay.bandwidth": Setting(int, 10_000_000, _at_least_one, "advertised bandwidth, bytes/s"),
    "relay.family": Setting(list, [], _family,
                            f"PeerIds of the operator's other relays (at most {MAX_FAMILY}); honoured when they "
                            "list this one too: no circuit then holds two of them"),
    "relay.listing_wait": Setting(float, 30.0, _listing_wait,
                                  "seconds to wait for the directory to list this relay before it reports ready"),
    "relay.max_links": Setting(int, _NODE.max_links, _at_least_one,
                               "links held (both directions) beyond which inbound ones are refused"),
    "relay.max_peers": Setting(str, "auto", _peer_limit,
                               "peer (relay) links kept: auto scales with the network (8 / 50 / 100 / 500 for "
                               "fewer than 10 / 100 / 1000 nodes or more), or a number"),
    "relay.max_links_per_address": Setting(int, 32, _at_least_one, "WebSocket links one remote address may hold"),
    "relay.max_circuits": Setting(int, _NODE.max_circuits, _at_least_one, "circuits; more CREATEs get RESOURCE_LIMIT"),
    "relay.handshake_rate": Setting(float, _NODE.handshake_rate, _at_least_one,
                                    "circuit handshakes per second per link"),
    "relay.onion_key_lifetime": Setting(float, float(DEFAULT_ONION_KEY_LIFETIME), None,
                                        "seconds between onion key rotations"),
    "relay.onion_key_grace": Setting(float, float(DEFAULT_ONION_KEY_GRACE), None,
                                     "seconds a replaced onion key still answers CREATEs (old descriptors)"),
    "security.exit_allow": Setting(list, [], _exit_rules,
                                   "CIDR:PORTS rules an exit may reach despite the default deny"),
    "exit.policy": Setting(list, [], _exit_policy, "accept|reject ADDRESS:PORTS rules before the default policy, "
                           "first match wins (docs/exits.md); ';' between rules in the environment", separator=";"),
    "exit.upstream": Setting(str, "", _upstream, "http://HOST:PORT: reach targets through this HTTP CONNECT proxy"),
    "network.allow_private_addresses": Setting(bool, False, None,
                                               "a private test network: dial loopback/private/link-local relays"),
    "client.socks": Setting(str, "127.0.0.1:1080", _host_port, "SOCKS5 listen address"),
    "client.exit_kind": Setting(str, "", _exit_kind, "use only exits of this kind: direct or proxy (empty: any)"),
    "client.exit_country": Setting(str, "", _country,
                                   "use only exits declaring this two-letter country (self-declared, unmeasured)"),
    "path.exclude_countries": Setting(list, [], _countries, "country codes whose relays circuits never use"),
    "client.data_dir": Setting(str, "", None, "folder keeping the entry guards so a restart uses the same ones "
                                              "(0700, file 0600); empty: memory only"),
    "client.max_circuit_dirtiness": Setting(float, _CIRCUITS.max_dirtiness, _circuit_policy("max_dirtiness"),
                                            "seconds a circuit takes new streams after its first"),
    "client.isolate_destination": Setting(bool, False, None, "a circuit per destination host as well"),
    "client.circuit_pool": Setting(int, _CIRCUITS.pool_size, _circuit_policy("pool_size"),
                                   "clean circuits kept built for new streams (0: none)"),
    "client.control": Setting(str, "", _optional_host_port, "control port HOST:PORT (docs/control.md); empty: off"),
    "client.control_allow_remote": Setting(bool, False, None,
                                           "let the control port listen on a non-loopback address"),
    "client.client_auth_key": Setting(str, "", None, "file of this client's X25519 key for onion services that "
                                      "authorise clients (made 0600 if absent, public half in FILE.pub); empty: none"),
    "service.data_dir": Setting(str, "~/.zmesh/service", None,
                                "`zmesh service`: folder of the service key (0700, key 0600); its .mesh address"),
    "service.forward": Setting(list, [], _forwards,
                               "`zmesh service`: [VPORT=]HOST:PORT, streams to VPORT go to HOST:PORT (repeatable)"),
    "service.intro_points": Setting(int, 3, _intro_points, "`zmesh service`: introduction points kept (1..10)"),
    "service.intro_lifetime": Setting(float, 6 * 3600.0, _intro_lifetime,
                                      "`zmesh service`: seconds before an introduction point is rotated"),
    "client.multipath": Setting(bool, False, None, "split each stream over two circuits that share only the exit "
                                                   "(docs/protocol.md, Multipath)"),
    "service.authorized_clients": Setting(list, [], _client_keys,
                                          "`zmesh service`: only clients holding these X25519 keys (64 hex digits, "
                                          "their FILE.pub) can read the descriptor (repeatable); empty: anyone"),
    "socks.max_connections": Setting(int, _SOCKS.max_connections, _socks_limit("max_connections"),
                                     "SOCKS connections held at once (idle ones are evicted first)"),
    "socks.handshake_timeout": Setting(float, _SOCKS.handshake_timeout, _socks_limit("handshake_timeout"),
                                       "seconds from connecting to the SOCKS request"),
    "socks.half_close_timeout": Setting(float, _SOCKS.half_close_timeout, _socks_limit("half_close_timeout"),
                                        "seconds a stream waits for its answer after the application's EOF"),
    "metrics.log_level": Setting(str, "INFO", _level, "log level"),
    "metrics.listen": Setting(str, "", _optional_host_port,
                              "HOST:PORT of the private Prometheus /metrics (empty: off); loopback unless allowed"),
    "metrics.allow_remote": Setting(bool, False, None,
                                    "let metrics.listen be a non-loopback address (its counters are a correlation "
                                    "oracle: firewall it)"),
    "anonymity.cover": Setting(str, "off", _cover,
                               "cover traffic on this node's own first link, both ways (docs/anonymity.md): off, "
                               "poisson:RATE or constant:RATE cells/s; throughput is capped at RATE KB/s"),
    "anonymity.keepalive": Setting(float, DEFAULT_KEEPALIVE, _keepalive_padding,
                                   "longest silence (s) before a link gets a PADDING cell (each gap drawn from 1/6..1 "
                                   "of it; only on idle links); 0: off"),
    "anonymity.jitter": Setting(float, 0.0, _jitter,
                                "timing jitter: the most seconds (at most 0.5) each link's cells are held and sent as "
                                "one batch, drawn afresh per batch; 0: off"),
    "anonymity.frame_padding": Setting(bool, False, None,
                                       "end each link frame with 0..1023 zero bytes, so frame sizes are not all "
                                       "multiples of 1024 (every peer must run this version or later)"),
    "anonymity.setup_padding": Setting(int, SetupSpec().cells, _setup_padding,
                                       "circuit-setup padding: each new circuit of this node carries at least this "
                                       "many cells each way on its first link within 2 s of the first hop's answer "
                                       "(DROP cells fill up), whatever its purpose; 0: off"),
    "anonymity.padding_max_rate": Setting(float, _NODE.padding_max_rate, _padding_max_rate,
                                          "padding cells/s a peer may ask this node to send it on one link; more is "
                                          "refused (DESTROY padding-limit)"),
    "anonymity.padding_max_percent": Setting(int, _NODE.padding_max_percent, _padding_max_percent,
                                             "the largest share (%) of a link's cells a peer's padding machine may "
                                             "make padding; more is refused"),
    "directory.authorities": Setting(list, [], _authorities,
                                     "directory authorities, URL#FINGERPRINT or {url, fingerprint}: relays publish to "
                                     "each, nodes use only their signed consensus (docs/directory.md)"),
    "authority.listen": Setting(str, "127.0.0.1:9030", _host_port, "where `zmesh authority` listens"),
    "authority.data_dir": Setting(str, "~/.zmesh/authority", None, "the authority's key folder (0700, key 0600)"),
    "authority.vote_interval": Setting(int, 0, _vote_interval,
                                       "seconds between votes (0: 300 on a private test network, else 3600)"),
}


def _coerce(name: str, value: Any, source: str) -> Any:
    setting = SETTINGS[name]
    try:
        if setting.kind is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError("expected true or false")
            value = lowered in ("1", "true", "yes", "on")
        elif setting.kind is list and isinstance(value, str):
            value = [part.strip() for part in value.split(setting.separator) if part.strip()]
        elif setting.kind in (int, float) and isinstance(value, str):
            value = setting.kind(value)
        if setting.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, setting.kind) or (setting.kind is int and isinstance(value, bool)):
            raise ValueError(f"expected {setting.kind.__name__}")
        return setting.check(value) if setting.check else value
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{name} = {value!r} (from {source}) is invalid: {exc}") from exc


def load(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, the TOML file, the environment and flags into one validated dict."""
    values = {name: _coerce(name, setting.default, "the defaults") for name, setting in SETTINGS.items()}
    env = os.environ if env is None else env
    path = path or env.get("ZMESH_CONFIG")
    if path:
        try:
            document = tomllib.loads(Path(path).expanduser().read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        for section, table in document.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
            for key, value in table.items():
                name = f"{section}.{key}"
                if name not in SETTINGS:
                    raise ConfigError(f"{path}: unknown setting {name!r}")
                values[name] = _coerce(name, value, str(path))
    for name in SETTINGS:
        variable = "ZMESH_" + name.upper().replace(".", "_")
        if variable in env:
            values[name] = _coerce(name, env[variable], f"environment {variable}")
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, "command line")
    try:  # the two bound each other, so they are checked together
        check_schedule(values["relay.onion_key_lifetime"], values["relay.onion_key_grace"])
    except ConfigError as exc:
        raise ConfigError(f"relay.{exc}") from exc
    return values


def describe(config: dict[str, Any]) -> list[str]:
    """The effective settings as ``name = value`` lines (JSON values), secrets masked: what
    ``zmesh config --check`` prints, so an operator sees what a file, the environment and the
    defaults add up to."""
    return [f"{name} = {json.dumps(_plain(config[name]))}" for name in SETTINGS]


def _plain(value: Any) -> Any:
    if isinstance(value, PeerId | AuthorityRef):
        return value.text
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if fields.get("credential") is not None:
            fields["credential"] = "(set)"
        return fields
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def setup_padding(config: dict[str, Any]) -> SetupSpec | None:
    cells = config["anonymity.setup_padding"]
    return SetupSpec(cells=cells) if cells else None


def padding_policy(config: dict[str, Any]) -> PaddingPolicy:
    return PaddingPolicy.of(config["anonymity.keepalive"], config["anonymity.cover"], config["anonymity.jitter"],
                            config["anonymity.frame_padding"])


def socks_limits(config: dict[str, Any]) -> SocksLimits:
    return SocksLimits(config["socks.max_connections"], config["socks.handshake_timeout"],
                       config["socks.half_close_timeout"])


def circuit_policy(config: dict[str, Any]) -> CircuitPolicy:
    return CircuitPolicy(config["client.max_circuit_dirtiness"], config["client.circuit_pool"],
                         isolate_destination=config["client.isolate_destination"])


def control_address(config: dict[str, Any]) -> tuple[str, int] | None:
    """Where the control port listens (None: off)."""
    return private_address(config, "client.control", "client.control_allow_remote", "--control-allow-remote",
                           "the control port", "this client's circuit paths")


def metrics_address(config: dict[str, Any]) -> tuple[str, int] | None:
    """Where the private ``/metrics`` listens (None: off): its live counters are a correlation oracle."""
    return private_address(config, "metrics.listen", "metrics.allow_remote", "--metrics-allow-remote",
                           "/metrics", "this node's live traffic counters (which relay carries whose circuit)")


def private_address(config: dict[str, Any], listen: str, allow: str, flag: str, what: str,
                    shows: str) -> tuple[str, int] | None:
    """Where a private listener (``what``, set by ``listen``) listens, None if off. It has no
    authentication and ``shows`` what strangers must not see, so a non-loopback address needs the
    ``allow`` setting (``flag``), and gets a warning."""
    if not config[listen]:
        return None
    host, port = split_host_port(config[listen])
    if not _loopback(host):
        if not config[allow]:
            raise ConfigError(f"{listen} = {config[listen]!r} is not a loopback address; {what} has no "
                              f"authentication and shows {shows}, so it listens on loopback only (set {allow} / "
                              f"{flag} to allow it anyway)")
        logging.getLogger(__name__).warning(
            "%s listens on a non-loopback address: anyone who can reach it sees %s", what, shows)
    return host, port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere


def rtc_options(config: dict[str, Any]) -> RtcOptions:
    return RtcOptions(config["transport.ice_servers"], config["transport.webrtc_timeout"],
                      config["transport.channels"], config["transport.ice_policy"])


def split_host_port(value: str) -> tuple[str, int]:
    """Split a validated ``HOST:PORT`` (IPv6 hosts in brackets)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """``split_host_port`` undone: an IPv6 host goes in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
