"""SOCKS5 (RFC 1928) with username/password (RFC 1929), CONNECT only, names passed unresolved.

The server hands each CONNECT to ``open_stream(host, port, isolation)``; ``isolation`` is the
credential pair (or None), so different credentials can be kept on different circuits. Failures map
to the reply codes a SOCKS client understands. A tiny client (``socks5_connect``) serves tests and
benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Awaitable, Callable

from zmesh.errors import CircuitError, ExitPolicyError, StreamError, TransportError

from .splice import StreamLike, splice

log = logging.getLogger(__name__)

OpenStream = Callable[[str, int, object], Awaitable[StreamLike]]

NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, HOST_UNREACHABLE = 0x00, 0x01, 0x02, 0x04
CONNECTION_REFUSED, TTL_EXPIRED, COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 0x05, 0x06, 0x07, 0x08
_STREAM_REPLIES = {"exit_policy": NOT_ALLOWED, "resolve_failed": HOST_UNREACHABLE,
                   "connect_refused": CONNECTION_REFUSED, "timeout": TTL_EXPIRED}


class _Refused(Exception):
    def __init__(self, reply: int) -> None:
        self.reply = reply


def reply_for(exc: Exception) -> int:
    if isinstance(exc, ExitPolicyError):
        return NOT_ALLOWED
    if isinstance(exc, StreamError):
        return _STREAM_REPLIES.get(exc.reason, GENERAL_FAILURE)
    return GENERAL_FAILURE


def _reply(code: int) -> bytes:
    return bytes([5, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])


class Socks5Server:
    def __init__(self, open_stream: OpenStream, *, handshake_timeout: float = 10.0,
                 max_connections: int = 256) -> None:
        self.open_stream = open_stream
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.rejected = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.max_connections:
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # close() is shutting this connection down; asyncio would log a cancelled callback
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host, port, isolation = await asyncio.wait_for(self._handshake(reader, writer), self.handshake_timeout)
        except _Refused as refused:
            writer.write(_reply(refused.reply))
            await writer.drain()
            return
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ValueError, UnicodeError) as exc:
            self.rejected += 1
            log.debug("SOCKS handshake failed: %s", type(exc).__name__)
            return
        try:
            stream = await self.open_stream(host, port, isolation)
        except (StreamError, CircuitError, ExitPolicyError, TransportError) as exc:
            log.info("SOCKS CONNECT failed: %s", exc)
            writer.write(_reply(reply_for(exc)))
            await writer.drain()
            return
        writer.write(_reply(SUCCEEDED))
        await writer.drain()
        await splice(stream, reader, writer, end_on_tcp_eof=False)

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> tuple[str, int, object]:
        version, count = await reader.readexactly(2)
        if version != 5:
            raise ValueError("not SOCKS5")
        methods = await reader.readexactly(count)
        isolation: object = None
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
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif atyp == ATYP_DOMAIN:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode("idna")
        else:
            raise _Refused(ADDRESS_NOT_SUPPORTED)
        (port,) = struct.unpack(">H", await reader.readexactly(2))
        if command != CONNECT:
            raise _Refused(COMMAND_NOT_SUPPORTED)
        return host, port, isolation

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
            names = {NOT_ALLOWED: "not allowed by ruleset", HOST_UNREACHABLE: "host unreachable",
                     CONNECTION_REFUSED: "connection refused", TTL_EXPIRED: "timed out",
                     COMMAND_NOT_SUPPORTED: "command not supported"}
            raise TransportError(f"SOCKS5 reply 0x{reply[1]:02x}: {names.get(reply[1], 'general failure')}")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        writer.close()
        raise TransportError(f"SOCKS5 proxy closed the connection: {exc}") from exc
    except TransportError:
        writer.close()
        raise
    return reader, writer
