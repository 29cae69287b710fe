"""SOCKS5 (RFC 1928) with username/password (RFC 1929), CONNECT only, names passed unresolved.

The server hands each CONNECT to ``open_stream(host, port, isolation)``; ``isolation`` is the
credential pair (or None), so different credentials can be kept on different circuits. Failures map
to the reply codes a SOCKS client understands; every request that gets as far as its address gets
a reply:
- a name no BEGIN can carry (empty, a space, NUL, ``%``, not valid IDNA, over 255 bytes): 0x04
  host unreachable, since no host can be reached by that name (the mesh is not asked);
- port 0: 0x02 not allowed, the answer every exit's policy would give; so is a port no exit in the
  directory accepts (``ExitPolicyError`` from path selection: no circuit is built for it), and a
  port an onion service does not forward (END ``SERVICE_PORT``);
- an upstream-proxy exit whose proxy failed (``EndReason.UPSTREAM_FAILED``): 0x03 network unreachable;
- an address type other than IPv4, name or IPv6: 0x08; a command other than CONNECT: 0x07;
- a malformed ``.mesh`` name (a typo the address checksum caught): 0xF6, Tor's extended code for an
  invalid onion address; nothing is built for it;
- an onion service that authorises clients and not this one (``OnionAuthError``): 0xF5, Tor's code
  for wrong client authorisation; the client could not even read where its intro points are.

Connections take slots from a table of ``SocksLimits.max_connections``. When it is full, the
oldest connection that serves nobody yet (still in its handshake) or any more (the application
has closed its side and the answer is late) is evicted for the new one; only when every slot
carries a live stream is the newcomer refused. A tiny client (``socks5_connect``) serves tests and
benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from zmesh.cells import EndReason
from zmesh.errors import (
    ConfigError,
    ExitPolicyError,
    OnionAddressError,
    OnionAuthError,
    StreamError,
    TransportError,
    ZmeshError,
)
from zmesh.streams import format_target

from .splice import StreamLike, splice

log = logging.getLogger(__name__)

Credentials = tuple[bytes, bytes]  # RFC 1929 username and password
OpenStream = Callable[[str, int, Credentials | None], Awaitable[StreamLike]]

NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, NETWORK_UNREACHABLE, HOST_UNREACHABLE = 0x00, 0x01, 0x02, 0x03, 0x04
CONNECTION_REFUSED, TTL_EXPIRED, COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 0x05, 0x06, 0x07, 0x08
ONION_BAD_ADDRESS = 0xF6  # Tor's extended SOCKS error for an onion address that does not parse
ONION_AUTH_FAILED = 0xF5  # Tor's "wrong client authorization": this client's key (or none) is not listed
# An upstream-proxy exit whose proxy failed: the exit's way out is down, whatever the target.
_STREAM_REPLIES = {EndReason.EXIT_POLICY: NOT_ALLOWED, EndReason.RESOLVE_FAILED: HOST_UNREACHABLE,
                   EndReason.CONNECT_REFUSED: CONNECTION_REFUSED, EndReason.TIMEOUT: TTL_EXPIRED,
                   EndReason.UPSTREAM_FAILED: NETWORK_UNREACHABLE, EndReason.SERVICE_PORT: NOT_ALLOWED}


@dataclass(frozen=True, slots=True)
class SocksLimits:
    """How many connections the front holds and how long an idle one may keep its slot."""

    max_connections: int = 256
    handshake_timeout: float = 10.0  # greeting to CONNECT request, for a slow or silent application
    half_close_timeout: float = 30.0  # after the application's EOF, with nothing from the target

    def __post_init__(self) -> None:
        if not isinstance(self.max_connections, int) or not 1 <= self.max_connections <= 65536:
            raise ConfigError(f"socks max_connections must be 1..65536, got {self.max_connections!r}")
        for name in ("handshake_timeout", "half_close_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 86400:
                raise ConfigError(f"socks {name} must be more than 0 and at most 86400 seconds, got {value!r}")


class _Refused(Exception):
    def __init__(self, reply: int) -> None:
        self.reply = reply


def reply_for(exc: Exception) -> int:
    """The reply code for a failed CONNECT: the exit's END reason where SOCKS has a code for it."""
    if isinstance(exc, ExitPolicyError):
        return NOT_ALLOWED
    if isinstance(exc, OnionAddressError):
        return ONION_BAD_ADDRESS
    if isinstance(exc, OnionAuthError):
        return ONION_AUTH_FAILED
    if isinstance(exc, StreamError):
        return _STREAM_REPLIES.get(exc.reason, GENERAL_FAILURE)
    return GENERAL_FAILURE


def _reply(code: int) -> bytes:
    return bytes([5, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])


def _domain(raw: bytes) -> str:
    """The name as a BEGIN carries it (ASCII, IDNA-encoded); ``_Refused`` if it cannot name a host."""
    try:
        host = raw.decode("ascii") if raw.isascii() else raw.decode("utf-8").encode("idna").decode("ascii")
        if not host or not host.isprintable():  # (a trailing newline would slip past a `$` pattern)
            raise ValueError("empty name or a control character")
        format_target(host, 1)
    except (UnicodeError, ValueError, ConfigError):
        raise _Refused(HOST_UNREACHABLE) from None
    return host


class Socks5Server:
    def __init__(self, open_stream: OpenStream, limits: SocksLimits | None = None) -> None:
        self.open_stream = open_stream
        self.limits = limits or SocksLimits()
        self.rejected = 0  # handshakes that failed
        self.evicted = 0  # idle connections closed to make room
        self.refused = 0  # connections turned away with every slot busy
        self._server: asyncio.Server | None = None
        # task -> evictable? Insertion order is age, so the first evictable entry is the oldest.
        self._tasks: dict[asyncio.Task, bool] = {}

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        full = len(self._tasks) >= self.limits.max_connections
        victim = self._evict_one() if full else None
        if full and victim is None:
            self.refused += 1
            writer.close()
            return
        self._tasks[task] = True
        try:
            if victim is not None:  # once it has finished, its END is out and its circuit slot free too
                await asyncio.gather(victim, return_exceptions=True)
            await self._serve(task, reader, writer)
        except asyncio.CancelledError:
            pass  # close() or an eviction is shutting this connection down
        except ConnectionError:
            pass  # the application went away before its reply; asyncio would log a traceback
        finally:
            self._tasks.pop(task, None)
            writer.close()

    def _evict_one(self) -> asyncio.Task | None:
        victim = next((task for task, idle in self._tasks.items() if idle), None)
        if victim is not None:
            del self._tasks[victim]
            victim.cancel()
            self.evicted += 1
        return victim

    def _mark(self, task: asyncio.Task, *, idle: bool) -> None:
        if task in self._tasks:
            self._tasks[task] = idle

    async def _serve(self, task: asyncio.Task, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host, port, isolation = await asyncio.wait_for(self._handshake(reader, writer),
                                                           self.limits.handshake_timeout)
        except _Refused as refused:
            writer.write(_reply(refused.reply))
            await writer.drain()
            return
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ValueError) as exc:
            self.rejected += 1
            log.debug("SOCKS handshake failed: %s", type(exc).__name__)
            return
        self._mark(task, idle=False)
        try:
            stream = await self.open_stream(host, port, isolation)
        except ZmeshError as exc:
            log.info("SOCKS CONNECT failed: %s", exc)
            writer.write(_reply(reply_for(exc)))
            await writer.drain()
            return
        writer.write(_reply(SUCCEEDED))
        await writer.drain()
        await splice(stream, reader, writer, end_on_tcp_eof=False,
                     half_close_timeout=self.limits.half_close_timeout,
                     on_half_close=lambda: self._mark(task, idle=True))

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> tuple[str, int, Credentials | None]:
        version, count = await reader.readexactly(2)
        if version != 5:
            raise ValueError("not SOCKS5")
        methods = await reader.readexactly(count)
        isolation: Credentials | None = None
        if USER_PASS in methods:
            writer.write(bytes([5, USER_PASS]))
            await writer.drain()
            sub, ulen = await reader.readexactly(2)
            username = await reader.readexactly(ulen)
            (plen,) = await reader.readexactly(1)
            password = await reader.readexactly(plen)
            if sub != 1:
                raise ValueError("bad RFC 1929 version")
            writer.write(b"\x01\x00")
            isolation = (username, password)
        elif NO_AUTH in methods:
            writer.write(bytes([5, NO_AUTH]))
        else:
            writer.write(bytes([5, NO_ACCEPTABLE]))
            await writer.drain()
            raise ValueError("no acceptable authentication method")
        await writer.drain()
        version, command, _, atyp = await reader.readexactly(4)
        if version != 5:
            raise ValueError("not SOCKS5")
        if atyp == ATYP_IPV4:
            address = await reader.readexactly(4)
        elif atyp == ATYP_IPV6:
            address = await reader.readexactly(16)
        elif atyp == ATYP_DOMAIN:
            address = await reader.readexactly((await reader.readexactly(1))[0])
        else:
            raise _Refused(ADDRESS_NOT_SUPPORTED)
        (port,) = struct.unpack(">H", await reader.readexactly(2))
        if command != CONNECT:
            raise _Refused(COMMAND_NOT_SUPPORTED)
        host = _domain(address) if atyp == ATYP_DOMAIN else str(ipaddress.ip_address(address))
        if port == 0:
            raise _Refused(NOT_ALLOWED)
        return host, port, isolation

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


async def socks5_connect(proxy_host: str, proxy_port: int, host: str, port: int, *,
                         username: str | None = None, password: str | None = None
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection through a SOCKS5 proxy; ``TransportError`` names the reply on failure."""
    reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
    try:
        auth = username is not None
        writer.write(bytes([5, 1, USER_PASS if auth else NO_AUTH]))
        if (await reader.readexactly(2))[1] == NO_ACCEPTABLE:
            raise TransportError("SOCKS5 proxy accepted no offered authentication method")
        if auth:
            user, secret = username.encode(), (password or "").encode()
            writer.write(bytes([1, len(user)]) + user + bytes([len(secret)]) + secret)
            if (await reader.readexactly(2))[1] != 0:
                raise TransportError("SOCKS5 authentication failed")
        try:
            address = ipaddress.ip_address(host)
            target = (bytes([ATYP_IPV4]) if address.version == 4 else bytes([ATYP_IPV6])) + address.packed
        except ValueError:
            name = host.encode("idna")
            target = bytes([ATYP_DOMAIN, len(name)]) + name
        writer.write(bytes([5, CONNECT, 0]) + target + struct.pack(">H", port))
        reply = await reader.readexactly(10)
        if reply[1] != SUCCEEDED:
            names = {NOT_ALLOWED: "not allowed by ruleset", NETWORK_UNREACHABLE: "network unreachable",
                     HOST_UNREACHABLE: "host unreachable",
                     CONNECTION_REFUSED: "connection refused", TTL_EXPIRED: "timed out",
                     COMMAND_NOT_SUPPORTED: "command not supported",
                     ADDRESS_NOT_SUPPORTED: "address type not supported",
                     ONION_AUTH_FAILED: "the onion service does not authorise this client"}
            raise TransportError(f"SOCKS5 reply 0x{reply[1]:02x}: {names.get(reply[1], 'general failure')}")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        writer.close()
        raise TransportError(f"SOCKS5 proxy closed the connection: {exc}") from exc
    except TransportError:
        writer.close()
        raise
    return reader, writer
