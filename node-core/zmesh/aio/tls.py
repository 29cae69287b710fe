"""TLS end to end over a mesh stream: the exit relays ciphertext only.

The TLS implementation is supplied as a sans-IO ``TlsSession`` (bytes in, bytes out, no sockets):
the stdlib's ``ssl.SSLObject`` natively (``zmesh.native.tls``), tlslite-ng in a tab
(``zmesh.browser.tls``). ``TlsStream`` is the one asyncio loop that moves their bytes over a
``MeshStream`` and offers the stream's own ``read`` / ``write`` / ``close``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import TlsError
from .driver import MeshStream


class TlsSession(Protocol):
    """A TLS client that never touches a socket. Each call either completes or returns ``None``
    ("feed me more ciphertext"); ciphertext to send collects in ``outgoing()``."""

    def handshake(self) -> bool | None:
        """Advance the handshake; True once complete (the server's certificate accepted)."""

    def receive(self, data: bytes) -> None:
        """Ciphertext from the server; ``b""`` is the end of the stream."""

    def outgoing(self) -> bytes:
        """Ciphertext to send to the server (taken: the buffer empties)."""

    def read(self) -> bytes | None:
        """Plaintext that has arrived; ``b""`` once the server closed the session."""

    def write(self, data: bytes) -> None:
        """Encrypt ``data`` for the server."""

    def close(self) -> None:
        """Send close_notify."""

    @property
    def closed_cleanly(self) -> bool:
        """Whether the server ended with close_notify (False: the stream just ended, so a
        close-delimited answer may have been cut short by whoever carried it)."""


TlsConnector = Callable[[str], TlsSession]  # server name (DNS name or IP literal) -> a fresh client session


class TlsStream:
    """A ``MeshStream``'s interface, encrypted: what ``MeshVPN.fetch`` uses for ``https://``."""

    def __init__(self, stream: MeshStream, session: TlsSession) -> None:
        self._stream, self._session = stream, session
        self._eof = False

    @property
    def closed_cleanly(self) -> bool:
        return self._session.closed_cleanly

    async def _flush(self) -> None:
        if data := self._session.outgoing():
            await self._stream.write(data)

    async def _pull(self) -> None:
        if self._eof:
            raise TlsError("the server's TLS session ended in the middle of a message")
        data = await self._stream.read()
        self._eof = not data
        self._session.receive(data)

    async def handshake(self) -> None:
        """Run the handshake; raises ``CertificateError`` / ``TlsError`` if it fails."""
        while not self._session.handshake():
            await self._flush()
            await self._pull()
        await self._flush()

    async def read(self) -> bytes:
        """Plaintext as it arrives; ``b""`` at the end of the session."""
        while (data := self._session.read()) is None:
            await self._flush()
            await self._pull()
        return data

    async def write(self, data: bytes) -> None:
        self._session.write(data)
        await self._flush()

    async def close(self) -> None:
        try:
            if not self._stream.ended:
                self._session.close()
                await self._flush()
        finally:
            await self._stream.close()


async def open_tls(stream: MeshStream, connector: TlsConnector, server_name: str) -> TlsStream:
    """Start TLS on an open stream; the stream is closed if the handshake fails."""
    tls = TlsStream(stream, connector(server_name))
    try:
        await tls.handshake()
    except BaseException:
        await stream.close()
        raise
    return tls
