"""``zmesh.aio.tls.TlsStream`` against a hostile or sloppy server, in memory: both TLS sessions
(the stdlib's and the tab's tlslite-ng) turn garbage and early ends into ``TlsError``, and a
response that may have been cut short is refused, not returned."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

import pytest

from zmesh.aio.http import http_get
from zmesh.aio.tls import open_tls
from zmesh.browser.tls import TlsliteConnector
from zmesh.errors import ProtocolError, TlsError
from zmesh.native.tls import stdlib_connector

from .https_support import CA, issue, server_context

CONNECTORS = {"stdlib ssl": stdlib_connector, "tlslite": TlsliteConnector}
LEAF = issue("server", CA, ips=("127.0.0.1",))


class ServerStream:
    """A ``MeshStream`` whose far end is a TLS server in memory: ``answer`` is its HTTP response,
    ``notify`` whether it ends with close_notify; ``garbage`` replaces its first flight."""

    def __init__(self, answer: bytes, *, notify: bool = True, garbage: bytes | None = None) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = server_context([LEAF, CA]).wrap_bio(self._in, self._out, server_side=True)
        self._answer, self._notify, self._garbage = answer, notify, garbage
        self._queue: deque[bytes] = deque()
        self._request, self._done, self.ended = b"", False, None
        self.sent = bytearray()

    async def write(self, data: bytes) -> None:
        self.sent += data
        if self._garbage is not None:
            self._queue.append(self._garbage)
            self._done = True
            return
        self._in.write(data)
        try:
            self._tls.do_handshake()
            self._request += self._tls.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        except ssl.SSLError:  # the client's close_notify or alert after the answer
            assert self._done
        if b"\r\n\r\n" in self._request and not self._done:
            self._tls.write(self._answer)
            if self._notify:
                try:
                    self._tls.unwrap()
                except ssl.SSLWantReadError:
                    pass
            self._done = True
        if data := self._out.read():
            self._queue.append(data)

    async def read(self) -> bytes:
        if self._queue:
            return self._queue.popleft()
        assert self._done, "the client waited for bytes the server would never send"
        return b""

    async def close(self) -> None:
        self.ended = "closed"


def fetch(stack: str, stream: ServerStream) -> object:
    async def run() -> object:
        tls = await open_tls(stream, CONNECTORS[stack]([CA.pem]), "127.0.0.1")
        try:
            return await http_get(tls, "127.0.0.1", "/")
        finally:
            await tls.close()

    return asyncio.run(run())


@pytest.mark.parametrize("stack", sorted(CONNECTORS))
def test_a_complete_answer_is_returned_and_the_request_never_crosses_in_clear(stack):
    stream = ServerStream(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", notify=False)
    response = fetch(stack, stream)
    assert (response.status, response.body) == (200, b"hello") and b"GET" not in stream.sent
    assert fetch(stack, ServerStream(b"HTTP/1.0 200 OK\r\n\r\nno length, but close_notify")).status == 200


@pytest.mark.parametrize("stack", sorted(CONNECTORS))
def test_an_answer_that_may_have_been_cut_short_is_refused(stack):
    with pytest.raises(ProtocolError, match="close_notify"):  # no length, no close_notify: maybe truncated
        fetch(stack, ServerStream(b"HTTP/1.0 200 OK\r\n\r\npart of a page", notify=False))
    with pytest.raises(ProtocolError, match="Content-Length"):
        fetch(stack, ServerStream(b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\nshort"))


@pytest.mark.parametrize("garbage", [b"", b"HTTP/1.0 200 OK\r\n\r\nnot TLS", b"\x16\x03\x03\x00\x04\x02\x00\x00\x00",
                                     b"\x15\x03\x03\x00\x02\x02\x28", bytes(range(256)) * 8])
@pytest.mark.parametrize("stack", sorted(CONNECTORS))
def test_garbage_or_an_early_end_instead_of_a_handshake_is_a_tls_error(stack, garbage):
    """Plain HTTP, a truncated ServerHello, a fatal alert, noise, nothing at all: only ``TlsError``."""
    with pytest.raises(TlsError):
        fetch(stack, ServerStream(b"", garbage=garbage))
