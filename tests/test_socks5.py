"""SOCKS5 front: RFC 1928/1929 on real loopback sockets, error replies, isolation keys."""

import asyncio
import hashlib
import logging
import os

import pytest

from zmesh.cells import DestroyReason, EndReason
from zmesh.errors import CircuitError, ConfigError, ExitPolicyError, InvalidState, StreamError, TransportError
from zmesh_relay.socks5 import Socks5Server, SocksLimits, socks5_connect


class EchoStream:
    """A StreamLike that echoes what is written, ending once ``close`` is called."""

    def __init__(self):
        self.queue = asyncio.Queue()

    async def read(self):
        return await self.queue.get()

    async def write(self, data):
        await self.queue.put(bytes(data))

    async def close(self, reason=None):
        await self.queue.put(b"")


async def serve(open_stream, **limits):
    server = Socks5Server(open_stream, SocksLimits(**{"handshake_timeout": 2.0, **limits}))
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
    (ExitPolicyError("no"), "0x02"), (StreamError("x", EndReason.RESOLVE_FAILED), "0x04"),
    (StreamError("x", EndReason.CONNECT_REFUSED), "0x05"), (StreamError("x", EndReason.TIMEOUT), "0x06"),
    (CircuitError("x", DestroyReason.TIMEOUT), "0x01"), (InvalidState("too many streams"), "0x01"),
    (ConfigError("bad target"), "0x01"),
])
def test_failures_map_to_reply_codes(error, code, caplog):
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
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


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


async def request(port, address: bytes, dest_port: int = 80, atyp: int = 3) -> int:
    """Send a raw CONNECT (``address`` as the wire carries it); return the reply code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        prefix = bytes([len(address)]) if atyp == 3 else b""
        writer.write(b"\x05\x01\x00" + bytes([5, 1, 0, atyp]) + prefix + address + dest_port.to_bytes(2, "big"))
        assert await reader.readexactly(2) == b"\x05\x00"
        return (await reader.readexactly(10))[1]
    finally:
        writer.close()


def ask(*requests):
    """Send raw CONNECTs to a server whose mesh records the hosts it is asked for; return the
    reply codes and those hosts."""
    asked = []

    async def open_stream(host, port, isolation):
        asked.append(host)
        return EchoStream()

    async def main():
        server, port = await serve(open_stream)
        try:
            return [await request(port, *each) for each in requests]
        finally:
            await server.close()

    return asyncio.run(main()), asked


@pytest.mark.parametrize("address, dest_port, code", [
    (b"a b.example", 80, 0x04), (b"a\x00b.example", 80, 0x04), (b"fe80::1%eth0", 80, 0x04),
    (b"host%00.example", 80, 0x04), (b"\xff\xfe.example", 80, 0x04), (b"", 80, 0x04),
    ("\u0080\u200b.example".encode(), 80, 0x04), (b"a\n", 80, 0x04), (b"example.org", 0, 0x02),
])
def test_requests_that_name_no_reachable_target_get_a_reply_rfc1928_section6(address, dest_port, code, caplog):
    """Each gets its RFC 1928 §6 reply (never a silent close), the mesh is not asked, nothing logged at ERROR."""
    codes, asked = ask((address, dest_port), (bytes([192, 0, 2, 1]), 0, 1), (b"\x00" * 4, 80, 5))
    assert codes == [code, 0x02, 0x08] and asked == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_international_name_reaches_the_mesh_idna_encoded():
    assert ask(("bücher.example".encode(),)) == ([0x00], ["xn--bcher-kva.example"])


class AnswerStream:
    """A target that answers ``answer`` (then END DONE) once it has heard from the application;
    ``silent`` ones never answer. Counts the ENDs it got and with which reason."""

    def __init__(self, answer=b"", silent=False):
        self.answer, self.silent = answer, silent
        self.heard = asyncio.Event()
        self.ended = asyncio.Event()
        self.end_reasons = []

    async def read(self):
        if self.silent:
            await self.ended.wait()
            return b""
        await self.heard.wait()
        answer, self.answer = self.answer, b""
        return answer

    async def write(self, data):
        self.heard.set()

    async def close(self, reason=None):
        self.end_reasons.append(reason)
        self.ended.set()


def test_an_application_that_shuts_down_writing_still_gets_the_whole_answer():
    answer = os.urandom(512 * 1024)

    async def open_stream(host, port, isolation):
        return AnswerStream(answer)

    async def main():
        server, port = await serve(open_stream, half_close_timeout=30.0)
        try:
            reader, writer = await socks5_connect("127.0.0.1", port, "example.org", 80)
            writer.write(b"request")
            writer.write_eof()  # shutdown(SHUT_WR), then wait for the answer
            assert await reader.read() == answer  # and a clean EOF after it, not a reset
            writer.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_a_closed_application_with_a_silent_target_frees_its_slot_after_the_half_close_timeout():
    """The application's close ends the stream (END) within the timeout, though the target says nothing."""
    from tests.conftest import wait_until

    streams = []

    async def open_stream(host, port, isolation):
        streams.append(AnswerStream(silent=True))
        return streams[-1]

    async def main():
        server, port = await serve(open_stream, half_close_timeout=0.2)
        try:
            for _ in range(20):
                reader, writer = await socks5_connect("127.0.0.1", port, "example.org", 80)
                writer.close()
            await wait_until(lambda: len(streams) == 20 and all(s.ended.is_set() for s in streams), 10)
            await wait_until(lambda: not server._tasks, 10)
            assert server.evicted == 0
        finally:
            await server.close()

    asyncio.run(main())


def test_a_full_table_evicts_the_oldest_idle_connection_not_the_newcomer():
    """Greeting-less connections and closed-but-unanswered ones give way, oldest first; live streams
    are never evicted, and only when every slot carries one is a newcomer turned away."""
    silent = []

    async def open_stream(host, port, isolation):
        silent.append(AnswerStream(silent=True))
        return silent[-1]

    async def main():
        from tests.conftest import wait_until

        server, port = await serve(open_stream, max_connections=8, half_close_timeout=600.0, handshake_timeout=600.0)
        try:
            idle = []
            for _ in range(4):  # applications that closed with the target silent: half-closed
                reader, writer = await socks5_connect("127.0.0.1", port, "example.org", 80)
                writer.close()
            await wait_until(lambda: sum(server._tasks.values()) == 4)
            for _ in range(4):  # connections that never send a greeting
                idle.append(await asyncio.open_connection("127.0.0.1", port))
            await wait_until(lambda: len(server._tasks) == 8)
            live = []
            for index in range(8):  # each newcomer gets served, evicting the oldest idle one
                live.append(await socks5_connect("127.0.0.1", port, "example.org", 80))
                assert server.evicted == index + 1
            assert [s.end_reasons for s in silent[:4]] == [[EndReason.MISC]] * 4  # evicted: END, not DONE
            for reader, _ in idle:  # the greeting-less ones were closed
                assert await asyncio.wait_for(reader.read(), 5) == b""
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # 8 live streams: refused
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert server.refused == 1 and len(server._tasks) == 8
            assert not any(s.ended.is_set() for s in silent[4:])
        finally:
            await server.close()

    asyncio.run(main())


def test_an_abnormal_end_resets_the_application_a_normal_one_is_a_fin():
    class Dying(AnswerStream):
        async def read(self):
            if self.answer:
                answer, self.answer = self.answer, b""
                return answer
            raise StreamError("the circuit carrying this stream was destroyed", EndReason.DESTROYED)

    async def main():
        for stream, outcome in ((Dying(b"part of it"), ConnectionResetError), (AnswerStream(b"all"), b"all")):
            stream.heard.set()

            async def open_stream(host, port, isolation, stream=stream):
                return stream

            server, port = await serve(open_stream)
            try:
                reader, writer = await socks5_connect("127.0.0.1", port, "example.org", 80)
                if outcome is ConnectionResetError:
                    assert await reader.readexactly(10) == b"part of it"
                    with pytest.raises(ConnectionResetError):
                        await reader.read()
                else:
                    assert await reader.read() == outcome
                writer.close()
            finally:
                await server.close()

    asyncio.run(main())


def test_limits_are_config_errors():
    for bad in ({"max_connections": 0}, {"handshake_timeout": 0}, {"half_close_timeout": -1},
                {"max_connections": "8"}):
        with pytest.raises(ConfigError):
            SocksLimits(**bad)


def test_an_application_that_resets_before_its_reply_costs_no_traceback(caplog):
    from tests.conftest import wait_until
    from zmesh_relay.splice import reset

    gone = asyncio.Event()

    async def open_stream(host, port, isolation):
        await gone.wait()
        raise StreamError("x", EndReason.CONNECT_REFUSED)

    async def main():
        server, port = await serve(open_stream)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.org\x00\x50")
            assert await reader.readexactly(2) == b"\x05\x00"
            await wait_until(lambda: len(server._tasks) == 1 and not any(server._tasks.values()))
            reset(writer)
            gone.set()
            await wait_until(lambda: not server._tasks)
        finally:
            await server.close()

    caplog.set_level(logging.DEBUG)
    asyncio.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_limits_come_from_toml_environment_and_flags(tmp_path):
    from zmesh_relay import config as settings
    from zmesh_relay.cli import parser

    toml = tmp_path / "zmesh.toml"
    toml.write_text("[socks]\nmax_connections = 8\nhalf_close_timeout = 5\n")
    flags = vars(parser().parse_args(["client", "--socks-handshake-timeout", "3"]))
    loaded = settings.load(toml, env={"ZMESH_SOCKS_HALF_CLOSE_TIMEOUT": "2.5"},
                           flags={k: v for k, v in flags.items() if "." in k})
    assert settings.socks_limits(loaded) == SocksLimits(8, handshake_timeout=3.0, half_close_timeout=2.5)
    with pytest.raises(ConfigError, match="socks.max_connections.*ZMESH_SOCKS_MAX_CONNECTIONS"):
        settings.load(env={"ZMESH_SOCKS_MAX_CONNECTIONS": "0"})
