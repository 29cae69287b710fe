"""SOCKS5 front: RFC 1928/1929 on real loopback sockets, error replies, isolation keys."""

import asyncio
import hashlib
import os

import pytest

from zmesh.errors import CircuitError, ExitPolicyError, StreamError, TransportError
from zmesh_relay.socks5 import Socks5Server, socks5_connect


class EchoStream:
    """A StreamLike that echoes what is written, ending once ``close`` is called."""

    def __init__(self):
        self.queue = asyncio.Queue()

    async def read(self):
        return await self.queue.get()

    async def write(self, data):
        await self.queue.put(bytes(data))

    async def close(self):
        await self.queue.put(b"")


async def serve(open_stream):
    server = Socks5Server(open_stream, handshake_timeout=2.0)
    port = await server.start("127.0.0.1", 0)
    return server, port


def test_targets_and_isolation_reach_open_stream():
    seen = []

    async def open_stream(host, port, isolation):
        seen.append((host, port, isolation))
        return EchoStream()

    async def main():
        server, port = await serve(open_stream)
        try:
            for host in ("192.0.2.7", "2001:db8::1", "example.org"):
                reader, writer = await socks5_connect("127.0.0.1", port, host, 443)
                writer.close()
            reader, writer = await socks5_connect("127.0.0.1", port, "example.org", 80, username="a", password="b")
            writer.close()
        finally:
            await server.close()

    asyncio.run(main())
    assert seen == [("192.0.2.7", 443, None), ("2001:db8::1", 443, None), ("example.org", 443, None),
                    ("example.org", 80, (b"a", b"b"))]


@pytest.mark.parametrize("error, code", [
    (ExitPolicyError("no"), "0x02"), (StreamError("x", "resolve_failed"), "0x04"),
    (StreamError("x", "connect_refused"), "0x05"), (StreamError("x", "timeout"), "0x06"),
    (CircuitError("x", "timeout"), "0x01"),
])
def test_failures_map_to_reply_codes(error, code):
    async def open_stream(host, port, isolation):
        raise error

    async def main():
        server, port = await serve(open_stream)
        try:
            with pytest.raises(TransportError, match=code):
                await socks5_connect("127.0.0.1", port, "example.org", 80)
        finally:
            await server.close()

    asyncio.run(main())


def test_garbage_and_unsupported_commands_do_not_break_the_server():
    async def open_stream(host, port, isolation):
        return EchoStream()

    async def main():
        server, port = await serve(open_stream)
        try:
            for garbage in (b"\x04\x01\x00\x50", b"\x05", os.urandom(64), b"\x05\x01\x00\x05\x02\x00\x01"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(garbage)
                await writer.drain()
                writer.write_eof()
                await reader.read()  # the server closes without crashing
                writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x05\x01\x00" + b"\x05\x02\x00\x01" + bytes([192, 0, 2, 1]) + b"\x00\x50")  # BIND
            await writer.drain()
            assert (await reader.readexactly(2)) == b"\x05\x00"
            assert (await reader.readexactly(10))[1] == 0x07
            writer.close()
            # and a good request still works afterwards, carrying 2 MiB both ways intact
            payload = os.urandom(2 * 1024 * 1024)
            reader, writer = await socks5_connect("127.0.0.1", port, "example.org", 80)
            writer.write(payload)
            await writer.drain()
            echoed = await reader.readexactly(len(payload))
            writer.close()
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            assert server.rejected >= 3
        finally:
            await server.close()
        assert not server._tasks

    asyncio.run(main())
