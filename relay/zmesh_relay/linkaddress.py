"""What a relay listens with and publishes: its TLS certificate (optional) and its link address.

A relay with ``relay.tls_cert``/``relay.tls_key`` serves links over TLS and publishes a ``wss://``
address pinned to its certificate (``zmesh.netaddr.LinkAddress``), so a self-signed certificate is
as safe as a CA-signed one between native nodes: the pin travels in the signed descriptor.
``relay.advertise`` publishes another address than the listening one — a relay on ``0.0.0.0``, or
behind a reverse proxy that terminates TLS with a certificate from an authority (then unpinned).
Both are published with ``relay.ws_path``, unless ``relay.advertise`` names a path of its own (a
proxy that maps one path to another).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

from zmesh.errors import ConfigError, ProtocolError
from zmesh.netaddr import LINK_PATH, LinkAddress


@dataclass(frozen=True)
class RelayTls:
    context: ssl.SSLContext
    certificate_sha256: bytes  # the pin: SHA-256 of the DER certificate


def load_tls(cert: str, key: str) -> RelayTls | None:
    """The relay's TLS server context and pin, or None without a certificate."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("relay.tls_cert and relay.tls_key go together: give both or neither")
    cert_path, key_path = Path(cert).expanduser(), Path(key).expanduser()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
        pem = cert_path.read_text()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"cannot use the TLS certificate {cert_path} with key {key_path}: {exc}") from exc
    end = "-----END CERTIFICATE-----"
    leaf = pem[:pem.index(end) + len(end)] if end in pem else pem
    return RelayTls(context, hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf)).digest())


def published_address(listen_host: str, port: int, *, advertise: str, tls: RelayTls | None,
                      path: str = LINK_PATH) -> LinkAddress:
    """The link address to put in the descriptor, or ``ConfigError`` saying what to set."""
    if advertise:
        try:
            address = LinkAddress.parse(advertise)
        except ProtocolError as exc:
            raise ConfigError(f"relay.advertise: {exc}") from exc
        if "/" not in advertise.partition("#")[0].partition("://")[2]:  # no path of its own
            address = replace(address, path=path)
        if tls is not None:
            if address.scheme != "wss":
                raise ConfigError(f"this relay serves TLS, so relay.advertise must be wss://, not {address.url}")
            if address.pin not in (None, tls.certificate_sha256):
                raise ConfigError("relay.advertise carries a pin that is not this relay's certificate's")
            address = address.pinned(tls.certificate_sha256)
        if address.unspecified:
            raise ConfigError(f"relay.advertise {address.url} is not an address anyone can dial")
        return address
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    address = LinkAddress.parse(f"{'wss' if tls else 'ws'}://{host}:{port}{path}")
    if address.unspecified:
        raise ConfigError(f"this relay listens on {listen_host}, every interface, which nobody can dial: "
                          "say which address to publish with relay.advertise (--advertise ws://HOST:PORT)")
    return address.pinned(tls.certificate_sha256) if tls is not None else address
