"""The tab's ``TlsSession`` (``zmesh.aio.tls``): tlslite-ng, pure Python, over memory buffers.

A browser gives a page no TLS over its own byte streams, so ``https://`` through the mesh runs
tlslite-ng (shipped as a local wheel, with its ``ecdsa`` and ``six`` dependencies) inside the tab:
the exit relays ciphertext only. tlslite-ng checks the handshake's own signature with the server's
key but no certificate chain, so the session accepts the server only once ``zmesh.browser.x509``
has checked the chain against the trust store: certifi's copy of Mozilla's root list (the certifi
wheel in the page, its version fixed when ``web/build_assets.py`` downloads it) plus any
``extraCAs`` the page gives.

tlslite-ng works on a socket; here its socket is ``_Buffers``, which hands it the ciphertext that
has arrived and says "would block" when there is none, so each of tlslite-ng's asynchronous
generators runs until it needs more input and resumes where it stopped.
"""

from __future__ import annotations

import errno
import ipaddress
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from ..errors import CertificateError, ConfigError, TlsError, ZmeshError
from .x509 import TrustStore, certificates_from_pem, verify_chain


class _Buffers:
    """The socket tlslite-ng is given: reads from what the mesh stream delivered, writes to a buffer."""

    def __init__(self) -> None:
        self.incoming, self.outgoing, self.eof = bytearray(), bytearray(), False

    def recv(self, size: int) -> bytes:
        if not self.incoming:
            if self.eof:
                return b""
            raise BlockingIOError(errno.EWOULDBLOCK, "no ciphertext has arrived yet")
        data = bytes(self.incoming[:size])
        del self.incoming[:size]
        return data

    def send(self, data: bytes) -> int:
        self.outgoing += data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.outgoing += data

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Ended(Exception):
    """The mesh stream ended without the server's close_notify (tlslite-ng's TLSAbruptCloseError)."""


class TlsliteSession:
    """A client session for ``server_name``, accepting the server only for a chain ``store`` trusts."""

    def __init__(self, server_name: str, store: TrustStore, clock: Callable[[], float] = time.time) -> None:
        from .tlslite_api import HandshakeSettings, TLSAbruptCloseError, TLSConnection  # ~0.6 s in a tab: at first use

        self._abrupt = TLSAbruptCloseError
        self._buffers = _Buffers()
        self._conn = TLSConnection(self._buffers)
        self._server_name, self._store, self._clock = server_name, store, clock
        settings = HandshakeSettings()
        settings.minVersion = (3, 3)  # TLS 1.2 and 1.3 only
        self._steps: Generator[Any, None, None] | None = self._conn.handshakeClientCert(
            settings=settings, serverName=None if _is_ip(server_name) else server_name, async_=True)
        self._reading: Generator[Any, None, None] | None = None
        self._clean = False

    @property
    def closed_cleanly(self) -> bool:
        return self._clean

    def _run(self, steps: Generator[Any, None, None]) -> tuple[bool, Any]:
        """Resume ``steps``; (False, None) when it waits for ciphertext, else (True, its last value)."""
        result = None
        try:
            for result in steps:
                if result in (0, 1):  # 1 ("would block writing") cannot happen: sends never block
                    return False, None
        except ZmeshError:
            raise
        except self._abrupt:
            raise _Ended from None
        except Exception as exc:  # tlslite-ng's TLSError family, or its parsers' errors, on hostile bytes
            raise TlsError(f"TLS with the server failed: {type(exc).__name__}: {exc}") from None
        return True, result

    def handshake(self) -> bool | None:
        if self._steps is None:
            return True
        try:
            done, _ = self._run(self._steps)
        except _Ended:
            raise TlsError("the server's stream ended during the TLS handshake") from None
        if not done:
            return None
        self._steps = None
        chain = self._conn.session.serverCertChain
        if chain is None:
            raise CertificateError("untrusted", "the server sent no certificate")
        verify_chain([bytes(c.bytes) for c in chain.x509List], self._server_name, self._store, self._clock())
        return True

    def receive(self, data: bytes) -> None:
        if data:
            self._buffers.incoming += data
        else:
            self._buffers.eof = True

    def outgoing(self) -> bytes:
        data = bytes(self._buffers.outgoing)
        self._buffers.outgoing.clear()
        return data

    def read(self) -> bytes | None:
        if self._conn.closed:
            return b""
        self._reading = self._reading or self._conn.readAsync()
        try:
            done, data = self._run(self._reading)
        except _Ended:  # the stream ended without close_notify
            self._reading = None
            return b""
        if not done:
            return None
        self._reading = None
        if not data and self._conn.closed:
            self._clean = True
        return bytes(data)

    def write(self, data: bytes) -> None:
        done, _ = self._run(self._conn.writeAsync(data))
        if not done:
            raise TlsError("TLS session cannot send before the handshake is complete")

    def close(self) -> None:
        if not self._conn.closed:
            self._conn.closeSocket = True  # send close_notify; do not wait for the server's
            try:
                self._run(self._conn.closeAsync())
            except (TlsError, _Ended):
                pass


def _is_ip(name: str) -> bool:
    """IP literals get no SNI (RFC 6066 §3)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class TlsliteConnector:
    """Makes a ``TlsliteSession`` per ``https://`` fetch. The trust store is certifi's roots (unless
    ``bundled`` is False) plus ``extra_cas`` (PEM texts, checked here); the bundle is read at the
    first fetch, so a tab that never fetches ``https://`` never parses it."""

    def __init__(self, extra_cas: Sequence[str] = (), *, clock: Callable[[], float] = time.time,
                 bundled: bool = True) -> None:
        self._extra: list[bytes] = []
        for pem in extra_cas:
            found = certificates_from_pem(pem) if isinstance(pem, str) else []
            if not found:
                raise ConfigError("extraCAs: each entry must be a PEM certificate (-----BEGIN CERTIFICATE-----)")
            self._extra += found
        self._bundled, self._clock = bundled, clock
        self._store: TrustStore | None = None

    @property
    def store(self) -> TrustStore:
        if self._store is None:
            ders = list(self._extra)
            if self._bundled:
                import certifi  # type: ignore[import-not-found]  # the page's wheel; natively a dev dependency

                with open(certifi.where(), encoding="ascii") as bundle:
                    ders += certificates_from_pem(bundle.read())
            self._store = TrustStore(ders)
        return self._store

    def __call__(self, server_name: str) -> TlsliteSession:
        return TlsliteSession(server_name, self.store, self._clock)
