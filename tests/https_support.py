"""What the end-to-end HTTPS tests share (native and Chromium): test CAs and certificates made
with ``cryptography``, an HTTPS server answering every GET with ``PAYLOAD``, a TCP proxy that
records every byte the exit relay sends to and receives from the server, and the mesh of three
relay processes whose exit reaches the servers only through those proxies."""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .private_network import relay_listen
from .test_native_mesh import Process

# ~64 KiB that cannot occur by chance in ciphertext: a counter in words, line after line.
PAYLOAD = b"".join(b"zmesh end-to-end TLS payload line %06d\n" % i for i in range(1700))
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    """A certificate and its key, as PEM."""

    cert: x509.Certificate
    key: object

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _key(kind: str) -> object:
    return {"ec": lambda: ec.generate_private_key(ec.SECP256R1()),
            "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ed25519": ed25519.Ed25519PrivateKey.generate}[kind]()


def issue(name: str, issuer: Issued | None = None, *, ca: bool = False, path_len: int | None = None,
          ips: tuple[str, ...] = (), dns: tuple[str, ...] = (), not_before: datetime.datetime = NOW - DAY,
          not_after: datetime.datetime = NOW + 30 * DAY, kind: str = "ec", extra: tuple = (),
          eku: bool = True) -> Issued:
    """A certificate for ``name`` signed by ``issuer`` (self-signed without one)."""
    key = _key(kind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    names = [x509.IPAddress(IPv4Address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca and eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    signer = issuer.key if issuer else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Issued(builder.sign(signer, algorithm), key)


def answering(body: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler answering every GET with ``body`` (and its Content-Length)."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Answer


def server_context(chain: list[Issued]) -> ssl.SSLContext:
    """A TLS server context presenting ``chain`` (the server's certificate first)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        certs, key = Path(folder) / "chain.pem", Path(folder) / "key.pem"
        certs.write_text("".join(c.pem for c in chain))
        key.write_bytes(chain[0].key_pem())
        context.load_cert_chain(certs, key)
    return context


def serve(chain: list[Issued] | None) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0) answering every GET with ``PAYLOAD``: HTTPS with ``chain``
    (the server's certificate first), plain HTTP without one. Call ``shutdown``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), answering(PAYLOAD))
    if chain:
        server.socket = server_context(chain).wrap_socket(server.socket, server_side=True,
                                                          do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class RecordingProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream`` and keeps every byte in both directions: what
    the exit relay sent towards the server and what it received from it."""

    upstream: int
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, self.sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.received), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    record += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def plaintext_seen(record: bytes) -> bool:
    """Whether any 64-byte piece of ``PAYLOAD`` appears in ``record`` (the test's bound: none may)."""
    return any(PAYLOAD[i:i + 64] in record for i in range(0, len(PAYLOAD) - 64, 997))


CA = issue("zmesh test CA", ca=True)
WRONG_CA = issue("zmesh test CA", ca=True)  # same name, another key: only the signature tells them apart


@contextmanager
def https_mesh(folder: Path, web: Path | None = None) -> Iterator[tuple[str, dict[str, RecordingProxy]]]:
    """A signal server (serving ``web`` if given), three relays (relay N on 127.N.0.1, the third the
    exit) and four servers behind recording proxies: "good" (a chain to ``CA`` for 127.0.0.1),
    "wrong" (signed by ``WRONG_CA``), "expired", and "plain" (http://). Yields the signal URL and
    the proxies by name."""
    servers = {"good": serve([issue("server", CA, ips=("127.0.0.1",)), CA]),
               "wrong": serve([issue("server", WRONG_CA, ips=("127.0.0.1",))]),
               "expired": serve([issue("server", CA, ips=("127.0.0.1",), not_after=NOW - DAY)]),
               "plain": serve(None)}
    proxies = {name: RecordingProxy(server.server_address[1]) for name, server in servers.items()}
    processes = [Process("signal", "--listen", "127.0.0.1:0", *(["--web-root", str(web)] if web else []))]
    try:
        allow = [flag for proxy in proxies.values() for flag in ("--exit-allow", f"127.0.0.1/32:{proxy.port}")]
        for n in range(1, 4):
            processes.append(Process("relay", "--signal", processes[0].address[0], "--listen", relay_listen(n),
                                     "--data-dir", str(folder / f"r{n}"), *(allow + ["--exit"] if n == 3 else [])))
        yield processes[0].address[0], proxies
    finally:
        for process in reversed(processes):
            process.stop()
        for name, server in servers.items():
            proxies[name].close()
            server.shutdown()
