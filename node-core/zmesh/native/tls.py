"""The native ``TlsSession`` (``zmesh.aio.tls``): the standard library's ``ssl`` over memory BIOs.

OpenSSL does the whole job here: chain to the system's trusted roots (or the CAs given), signatures,
validity dates and the host name or IP address, so ``https://`` through the mesh is checked exactly
as ``urllib`` would check it directly.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence

from ..errors import CertificateError, ConfigError, TlsError

READ_SIZE = 64 * 1024
# OpenSSL's X509_V_ERR_* codes for the checks a user can act on; any other failure is "untrusted".
_REASONS = {9: "not yet valid", 10: "expired", 62: "hostname", 64: "hostname", 24: "not a CA"}


class StdlibTlsSession:
    """A client session on ``context`` for ``server_name`` (a DNS name or an IP literal)."""

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)
        self._clean = self._ended = False

    @property
    def closed_cleanly(self) -> bool:
        return self._clean

    def handshake(self) -> bool | None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(_REASONS.get(exc.verify_code, "untrusted"), exc.verify_message) from None
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake with the server failed: {exc.reason or exc}") from None
        return True

    def receive(self, data: bytes) -> None:
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
            self._ended = True

    def outgoing(self) -> bytes:
        return self._outgoing.read()

    def read(self) -> bytes | None:
        try:
            data = self._tls.read(READ_SIZE)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            data = b""
        except ssl.SSLEOFError:  # the stream ended without close_notify
            return b""
        except ssl.SSLError as exc:
            raise TlsError(f"TLS record from the server refused: {exc.reason or exc}") from None
        self._clean = not data  # an empty read is the server's close_notify (Python returns b"" for it)
        return data

    def write(self, data: bytes) -> None:
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS session cannot send: {exc.reason or exc}") from None

    def close(self) -> None:
        if self._ended:  # nobody is left to read a close_notify
            return
        try:
            self._tls.unwrap()
        except ssl.SSLError:  # want-read (the server's close_notify has not come) or already gone
            pass


def stdlib_connector(extra_cas: Sequence[str] = ()) -> Callable[[str], StdlibTlsSession]:
    """Sessions trusting the system's roots plus ``extra_cas`` (PEM texts, e.g. a test CA)."""
    context = ssl.create_default_context()
    for pem in extra_cas:
        try:
            context.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"extraCAs: an entry is not a PEM certificate ({exc})") from None
    return lambda server_name: StdlibTlsSession(context, server_name)
