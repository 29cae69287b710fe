"""The server-certificate check of a tab's ``https://`` fetch (tlslite-ng checks no chain itself).

What ``verify_chain`` checks, and nothing more (docs/browser.md lists it for users):
- a path from the server's certificate, through the intermediates it sent, to a certificate in the
  trust store (issuer and subject names compared byte for byte, RFC 5280 §7.1), at most
  ``MAX_DEPTH`` certificates long;
- each signature on the path, with the issuer's key and the algorithm the certificate signs (the
  unsigned outer label must equal it): RSA PKCS#1 v1.5 and RSA-PSS with SHA-256/384/512,
  ECDSA with SHA-256/384/512, Ed25519 (SHA-1 and MD5 signatures are refused, and RSA keys beyond
  ``MAX_RSA_BITS`` / ``MAX_RSA_EXPONENT_BITS``);
- every certificate's notBefore/notAfter, the trust anchor's included;
- intermediates: basicConstraints cA, keyUsage keyCertSign when keyUsage is present, pathLenConstraint,
  extendedKeyUsage serverAuth when present (as browsers require: an S/MIME-only CA vouches for no server);
- the server's certificate: extendedKeyUsage serverAuth when present, and the host name or IP
  address against its subjectAltName (dNSName, a wildcard only as the whole leftmost label of a
  name with at least two more labels; iPAddress); the subject's common name is never used;
- any critical extension not named here (policies, ...) makes the chain refused, and so does
  nameConstraints, critical or not: the CA/Browser Forum lets a constrained intermediate mark it
  non-critical, and ignoring it would let that intermediate issue for any name.
Not checked: revocation (no CRL, no OCSP), Certificate Transparency, policies.

DER is parsed here with strict lengths; the keys and signature arithmetic are tlslite-ng's (and
its ``ecdsa`` dependency's). Every failure is a ``CertificateError`` naming the check.
"""

from __future__ import annotations

import base64
import calendar
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import CertificateError

MAX_DEPTH = 8  # certificates on a path, the anchor included
MAX_CERT_SIZE = 64 * 1024
# A signature check is one pow(s, e, n) in pure Python: a hostile chain of RSA keys with huge
# exponents or moduli would cost minutes per certificate tried (BoringSSL's bounds: 33-bit e, and
# tlslite-ng's own for the server's key: 8192-bit n).
MAX_RSA_BITS, MAX_RSA_EXPONENT_BITS = 8192, 33
SEQUENCE, BOOLEAN, INTEGER, BIT_STRING, OCTET_STRING, OID = 0x30, 0x01, 0x02, 0x03, 0x04, 0x06
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18

_BASIC_CONSTRAINTS, _KEY_USAGE, _SAN, _EKU = "2.5.29.19", "2.5.29.15", "2.5.29.17", "2.5.29.37"
_NAME_CONSTRAINTS = "2.5.29.30"
_SERVER_AUTH, _ANY_EKU = "1.3.6.1.5.5.7.3.1", "2.5.29.37.0"
# signatureAlgorithm OID -> (key kind, hash); RSA-PSS ("1.2.840.113549.1.1.10") takes its hash from its parameters
_SIGNATURES = {
    "1.2.840.113549.1.1.11": ("rsa", "sha256"), "1.2.840.113549.1.1.12": ("rsa", "sha384"),
    "1.2.840.113549.1.1.13": ("rsa", "sha512"), "1.2.840.10045.4.3.2": ("ecdsa", "sha256"),
    "1.2.840.10045.4.3.3": ("ecdsa", "sha384"), "1.2.840.10045.4.3.4": ("ecdsa", "sha512"),
    "1.3.101.112": ("Ed25519", None),
}
_RSA_PSS = "1.2.840.113549.1.1.10"
_HASH_OIDS = {"2.16.840.1.101.3.4.2.1": "sha256", "2.16.840.1.101.3.4.2.2": "sha384",
              "2.16.840.1.101.3.4.2.3": "sha512"}
_HASH_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


class _Malformed(Exception):
    pass


def _tlv(data: bytes, at: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, end) of the DER element at ``at``; definite, minimal lengths only."""
    if at + 2 > len(data):
        raise _Malformed("truncated element")
    tag, first, at = data[at], data[at + 1], at + 2
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 3 or at + count > len(data) or data[at] == 0:
            raise _Malformed("bad length")
        length, at = int.from_bytes(data[at:at + count], "big"), at + count
        if length < 0x80:
            raise _Malformed("non-minimal length")
    else:
        length = first
    if at + length > len(data):
        raise _Malformed("element overruns its container")
    return tag, data[at:at + length], at + length


def _children(content: bytes) -> list[tuple[int, bytes, bytes]]:
    """(tag, content, whole encoding) of each element of a constructed value."""
    out, at = [], 0
    while at < len(content):
        tag, value, end = _tlv(content, at)
        out.append((tag, value, content[at:end]))
        at = end
    return out


def _oid(content: bytes) -> str:
    if not content:
        raise _Malformed("empty OID")
    arcs, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))


def _boolean(content: bytes) -> bool:
    """DER: TRUE is 0xff and FALSE 0x00, one byte; anything else is not read as either."""
    if content not in (b"\x00", b"\xff"):
        raise _Malformed("a BOOLEAN that is not DER")
    return content == b"\xff"


def _time(tag: int, content: bytes) -> int:
    """Seconds since the epoch of a UTCTime / GeneralizedTime in the ``Z`` form RFC 5280 requires."""
    text = content.decode("ascii", "replace")
    if tag == UTC_TIME and re.fullmatch(r"\d{12}Z", text):
        year = int(text[:2])
        text = str(year + (1900 if year >= 50 else 2000)) + text[2:]
    elif tag != GENERALIZED_TIME or not re.fullmatch(r"\d{14}Z", text):
        raise _Malformed("bad time")
    fields = [int(text[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    return calendar.timegm((*fields, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class Certificate:
    """The parts of one X.509 certificate the checks read."""

    der: bytes
    tbs: bytes
    signature_alg: tuple[str, str | None, str | None]  # (OID, key kind, hash)
    signature: bytes
    issuer: bytes
    subject: bytes
    not_before: int
    not_after: int
    ca: bool
    path_len: int | None
    key_usage: int | None  # the bits as an integer, bit 0 = digitalSignature (first bit of the string)
    eku: tuple[str, ...] | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[bytes, ...]
    unknown_critical: tuple[str, ...]  # and nameConstraints, critical or not: extensions that refuse it

    @property
    def key_cert_sign(self) -> bool:
        return self.key_usage is None or bool(self.key_usage & (1 << 5))

    def public_key(self) -> object:
        from .tlslite_api import X509  # tlslite-ng costs ~0.6 s to import in a tab: only when a path is checked

        parsed = X509()
        try:
            parsed.parseBinary(self.der)
        except Exception as exc:  # tlslite-ng raises SyntaxError and friends on keys it cannot read
            raise CertificateError("unsupported", f"its public key cannot be read ({exc})") from None
        key = parsed.publicKey
        if getattr(key, "key_type", None) in ("rsa", "rsa-pss") and (
                key.n.bit_length() > MAX_RSA_BITS or key.e.bit_length() > MAX_RSA_EXPONENT_BITS):
            raise CertificateError("unsupported", f"an RSA key over {MAX_RSA_BITS} bits or with an exponent over "
                                                  f"{MAX_RSA_EXPONENT_BITS} bits is not accepted")
        return key


def _signature_alg(algorithm: bytes) -> tuple[str, str | None, str | None]:
    parts = _children(algorithm)
    oid = _oid(parts[0][1])
    if oid == _RSA_PSS:  # RSASSA-PSS-params: [0] hashAlgorithm AlgorithmIdentifier, ...
        params = _children(parts[1][1]) if len(parts) > 1 else []
        hash_alg = next((_HASH_OIDS.get(_oid(_children(_children(value)[0][1])[0][1]))
                         for tag, value, _ in params if tag == 0xA0), None)
        return oid, "rsa-pss" if hash_alg else None, hash_alg
    kind, hash_alg = _SIGNATURES.get(oid, (None, None))
    return oid, kind, hash_alg


def parse_certificate(der: bytes) -> Certificate:
    """Parse one DER certificate; ``CertificateError("malformed")`` for anything else."""
    try:
        if len(der) > MAX_CERT_SIZE:
            raise _Malformed("too large")
        tag, body, end = _tlv(der)
        if tag != SEQUENCE or end != len(der):
            raise _Malformed("not a certificate")
        (tbs_tag, tbs_body, tbs), (_, algorithm, _), (sig_tag, signature, _) = _children(body)
        if tbs_tag != SEQUENCE or sig_tag != BIT_STRING or not signature or signature[0] != 0:
            raise _Malformed("bad signature field")
        fields = _children(tbs_body)
        if fields[0][0] == 0xA0:  # [0] version
            fields = fields[1:]
        _serial, signed_alg, issuer, validity, subject, _spki, *rest = fields
        if signed_alg[1] != algorithm:  # RFC 5280 4.1.1.2: the unsigned outer label must be the signed one
            raise _Malformed("the signature algorithm differs from the one the certificate signs")
        (before_tag, before, _), (after_tag, after, _) = _children(validity[1])
        ca, path_len, key_usage, eku, dns, ips, unknown = False, None, None, None, [], [], []
        seen: set[str] = set()
        for tag, value, _ in rest:
            if tag != 0xA3:  # [1] / [2] unique identifiers
                continue
            for _, extension, _ in _children(_children(value)[0][1]):
                parts = _children(extension)
                oid, critical = _oid(parts[0][1]), parts[1][0] == BOOLEAN and _boolean(parts[1][1])
                if oid in seen:  # RFC 5280 4.2: which of two instances counts would be a guess
                    raise _Malformed(f"extension {oid} appears twice")
                seen.add(oid)
                if parts[-1][0] != OCTET_STRING:
                    raise _Malformed("extension value")
                inner = _tlv(parts[-1][1])
                if oid == _BASIC_CONSTRAINTS:
                    for ctag, cvalue, _ in _children(inner[1]):
                        if ctag == BOOLEAN:
                            ca = _boolean(cvalue)
                        elif ctag == INTEGER:
                            path_len = int.from_bytes(cvalue, "big")
                elif oid == _KEY_USAGE:
                    bits = inner[1][1:]
                    key_usage = sum(((byte >> (7 - i)) & 1) << (8 * n + i) for n, byte in enumerate(bits)
                                    for i in range(8))
                elif oid == _EKU:
                    eku = tuple(_oid(v) for _, v, _ in _children(inner[1]))
                elif oid == _SAN:
                    for ntag, name, _ in _children(inner[1]):
                        if ntag == 0x82:
                            dns.append(name.decode("ascii").lower())
                        elif ntag == 0x87:
                            ips.append(bytes(name))
                elif critical or oid == _NAME_CONSTRAINTS:
                    unknown.append(oid)
        return Certificate(der, tbs, _signature_alg(algorithm), signature[1:], issuer[2], subject[2],
                           _time(before_tag, before), _time(after_tag, after), ca, path_len, key_usage, eku,
                           tuple(dns), tuple(ips), tuple(unknown))
    except (_Malformed, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CertificateError("malformed", f"a certificate cannot be parsed ({exc})") from None


def certificates_from_pem(text: str) -> list[bytes]:
    """The DER of every ``CERTIFICATE`` block in ``text``."""
    try:
        return [base64.b64decode("".join(block.split()), validate=True) for block in _PEM.findall(text)]
    except ValueError as exc:
        raise CertificateError("malformed", f"a PEM certificate is not base64 ({exc})") from None


class TrustStore:
    """Trusted root certificates, indexed by subject; each is fully parsed only when a path uses it."""

    def __init__(self, ders: Iterable[bytes]) -> None:
        self._by_subject: dict[bytes, list[bytes]] = {}
        for der in ders:
            self._by_subject.setdefault(_subject_of(der), []).append(der)

    def __len__(self) -> int:
        return sum(len(ders) for ders in self._by_subject.values())

    def issuers_of(self, cert: Certificate) -> list[Certificate]:
        return [parse_certificate(der) for der in self._by_subject.get(cert.issuer, ())]

    def holds(self, cert: Certificate) -> bool:
        return cert.der in self._by_subject.get(cert.subject, ())


def _subject_of(der: bytes) -> bytes:
    try:
        fields = _children(_children(_tlv(der)[1])[0][1])
        return fields[5 if fields[0][0] == 0xA0 else 4][2]
    except (_Malformed, IndexError) as exc:
        raise CertificateError("malformed", f"a trusted certificate cannot be parsed ({exc})") from None


def _signed_by(cert: Certificate, issuer: Certificate) -> bool:
    _oid_text, kind, hash_alg = cert.signature_alg
    if kind is None:
        raise CertificateError("unsupported", f"signature algorithm {_oid_text} is not accepted")
    key = issuer.public_key()
    key_kind = getattr(key, "key_type", None)
    try:
        if kind == "rsa" and key_kind in ("rsa", "rsa-pss"):
            return bool(key.hashAndVerify(cert.signature, cert.tbs, "pkcs1", hash_alg))
        if kind == "rsa-pss" and key_kind in ("rsa", "rsa-pss"):
            return bool(key.hashAndVerify(cert.signature, cert.tbs, "pss", hash_alg, _HASH_SIZES[hash_alg]))
        if kind == "ecdsa" and key_kind == "ecdsa":
            return bool(key.hashAndVerify(cert.signature, cert.tbs, hAlg=hash_alg))
        if kind == "Ed25519" and key_kind == "Ed25519":
            return bool(key.hashAndVerify(cert.signature, cert.tbs))
    except Exception:  # noqa: BLE001 - a malformed signature is a failed one, whatever the library raised
        return False
    return False


def _check_dates(cert: Certificate, now: float) -> None:
    if now < cert.not_before:
        raise CertificateError("not yet valid", "a certificate on the path is not valid yet")
    if now > cert.not_after:
        raise CertificateError("expired", "a certificate on the path has expired")


def _matches_host(cert: Certificate, host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.lower().rstrip(".")
        for pattern in cert.dns_names:
            if pattern == name:
                return True
            # A wildcard covers one label under at least two more: never "*.com" (the Public Suffix
            # List is not bundled, so "*.co.uk" would still match; CAs may not issue such names).
            if pattern.startswith("*.") and "*" not in pattern[2:] and "." in pattern[2:].strip("."):
                label, _, rest = name.partition(".")
                if rest == pattern[2:] and label:
                    return True
        return False
    return address.packed in cert.ip_addresses


def _for_tls_servers(cert: Certificate) -> bool:
    """No extendedKeyUsage, or one naming serverAuth (or any usage)."""
    return cert.eku is None or bool({_SERVER_AUTH, _ANY_EKU} & set(cert.eku))


def verify_chain(chain: list[bytes], host: str, store: TrustStore, now: float) -> None:
    """Accept the server's ``chain`` (its certificate first) for ``host`` at time ``now``, or raise
    ``CertificateError``. See the module docstring for exactly what is checked."""
    if not chain:
        raise CertificateError("untrusted", "the server sent no certificate")
    certs = [parse_certificate(der) for der in chain[:MAX_DEPTH]]
    leaf = certs[0]
    if leaf.unknown_critical:
        raise CertificateError("unsupported", f"extension {leaf.unknown_critical[0]} is not supported")
    if not _for_tls_servers(leaf):
        raise CertificateError("usage", "the certificate is not for TLS servers (extendedKeyUsage)")
    if not _matches_host(leaf, host):
        raise CertificateError("hostname", f"the certificate is not for {host!r}")
    current, below = leaf, 0  # below: intermediates under the next issuer, for pathLenConstraint
    for _ in range(MAX_DEPTH):
        _check_dates(current, now)
        if store.holds(current):
            return
        for anchor in store.issuers_of(current):
            if _signed_by(current, anchor):
                _check_dates(anchor, now)
                return
        issuer = next((c for c in certs[1:] if c.subject == current.issuer and c is not current
                       and _signed_by(current, c)), None)
        if issuer is None:
            raise CertificateError("untrusted", "no trusted root certificate issued this chain")
        if not issuer.ca or not issuer.key_cert_sign:
            raise CertificateError("not a CA", "an intermediate certificate is not allowed to sign certificates")
        if issuer.path_len is not None and below > issuer.path_len:
            raise CertificateError("not a CA", "the chain is longer than an intermediate's pathLenConstraint")
        if not _for_tls_servers(issuer):
            raise CertificateError("usage", "an intermediate certificate is not for TLS servers (extendedKeyUsage)")
        if issuer.unknown_critical:
            raise CertificateError("unsupported", f"extension {issuer.unknown_critical[0]} is not supported")
        current, below = issuer, below + 1
    raise CertificateError("untrusted", f"no trusted root within {MAX_DEPTH} certificates")
