"""The tab's certificate check (``zmesh.browser.x509``, on tlslite-ng's keys), run natively: each
rule of its module docstring accepts what it should and refuses the rest with its reason."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ObjectIdentifier

from zmesh.browser.x509 import TrustStore, parse_certificate, verify_chain
from zmesh.errors import CertificateError

from .https_support import DAY, NOW, issue

ROOT = issue("root", ca=True, kind="rsa")
STORE = TrustStore([ROOT.der])
NOW_S = NOW.timestamp()


def refused(chain, host="127.0.0.1", store=STORE, now=NOW_S) -> str:
    with pytest.raises(CertificateError) as caught:
        verify_chain([c.der for c in chain], host, store, now)
    return caught.value.reason


@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_a_leaf_of_each_key_kind_under_an_intermediate_is_accepted(kind):
    middle = issue("middle", ROOT, ca=True, path_len=0, kind=kind)
    leaf = issue("leaf", middle, ips=("127.0.0.1",), kind=kind)
    verify_chain([leaf.der, middle.der], "127.0.0.1", STORE, NOW_S)


def test_host_names_and_addresses_match_only_the_subject_alt_names():
    leaf = issue("leaf", ROOT, ips=("127.0.0.1",), dns=("*.example.org", "exact.test"))
    for host in ("127.0.0.1", "a.example.org", "EXACT.test", "exact.test."):
        verify_chain([leaf.der], host, STORE, NOW_S)
    for host in ("127.0.0.2", "example.org", "a.b.example.org", "other.test", "leaf"):
        assert refused([leaf], host) == "hostname"  # "leaf" is the CN: never used
    too_wide = issue("wide", ROOT, dns=("*.org", "*.", "*"))
    for host in ("example.org", "org", "a"):
        assert refused([too_wide], host) == "hostname"  # a wildcard over a whole top-level domain


def test_untrusted_roots_and_forged_signatures_are_refused():
    other = issue("root", ca=True)  # same name as ROOT, another key
    assert refused([issue("leaf", other, ips=("127.0.0.1",))]) == "untrusted"
    leaf = issue("leaf", ROOT, ips=("127.0.0.1",))
    forged = bytearray(leaf.der)
    forged[-5] ^= 1  # inside the signature
    with pytest.raises(CertificateError) as caught:
        verify_chain([bytes(forged)], "127.0.0.1", STORE, NOW_S)
    assert caught.value.reason == "untrusted"


def test_dates_of_every_certificate_on_the_path_are_checked():
    assert refused([issue("leaf", ROOT, ips=("127.0.0.1",), not_after=NOW - DAY)]) == "expired"
    assert refused([issue("leaf", ROOT, ips=("127.0.0.1",), not_before=NOW + DAY)]) == "not yet valid"
    middle = issue("middle", ROOT, ca=True, not_after=NOW - DAY)
    assert refused([issue("leaf", middle, ips=("127.0.0.1",)), middle]) == "expired"
    assert refused([issue("leaf", ROOT, ips=("127.0.0.1",))], now=NOW_S + 400 * 86400) == "expired"


def test_intermediates_must_be_cas_within_their_path_length():
    not_ca = issue("middle", ROOT, ca=False, eku=False)
    assert refused([issue("leaf", not_ca, ips=("127.0.0.1",)), not_ca]) == "not a CA"
    upper = issue("upper", ROOT, ca=True, path_len=0)
    lower = issue("lower", upper, ca=True)
    assert refused([issue("leaf", lower, ips=("127.0.0.1",)), lower, upper]) == "not a CA"


def test_usage_and_unknown_critical_extensions_are_refused():
    client_only = issue("leaf", ROOT, ips=("127.0.0.1",), eku=False,
                        extra=((x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False),))
    assert refused([client_only]) == "usage"
    odd = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    assert refused([issue("leaf", ROOT, ips=("127.0.0.1",), extra=((odd, True),))]) == "unsupported"
    verify_chain([issue("leaf", ROOT, ips=("127.0.0.1",), extra=((odd, False),)).der], "127.0.0.1", STORE, NOW_S)


def test_every_truncation_and_garbage_is_a_certificate_error():
    """Hostile bytes raise only ``CertificateError`` ("malformed"), never a parser's own exception."""
    der = issue("leaf", ROOT, ips=("127.0.0.1",)).der
    for cut in range(0, len(der), 7):
        with pytest.raises(CertificateError):
            parse_certificate(der[:cut])
    for garbage in (b"", b"\x30\x80", b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x02\x01", bytes(300)):
        with pytest.raises(CertificateError):
            verify_chain([garbage], "127.0.0.1", STORE, NOW_S)
    assert refused([]) == "untrusted"


def _resigned(leaf_of, signer, **sign) -> bytes:
    """``leaf_of``'s certificate signed again by ``signer`` (an ``Issued``) with ``sign``'s options."""
    cert = leaf_of.cert
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(signer.cert.subject)
               .public_key(cert.public_key()).serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(signer.key, **sign).public_bytes(serialization.Encoding.DER)


def test_rsa_pss_signatures_are_checked_and_sha1_is_refused():
    leaf = issue("leaf", ROOT, ips=("127.0.0.1",))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    verify_chain([_resigned(leaf, ROOT, algorithm=hashes.SHA256(), rsa_padding=pss)], "127.0.0.1", STORE, NOW_S)
    forged = bytearray(_resigned(leaf, ROOT, algorithm=hashes.SHA256(), rsa_padding=pss))
    forged[-3] ^= 1
    with pytest.raises(CertificateError, match="untrusted"):
        verify_chain([bytes(forged)], "127.0.0.1", STORE, NOW_S)
    sha256_rsa, sha1_rsa = bytes.fromhex("06092a864886f70d01010b"), bytes.fromhex("06092a864886f70d010105")
    sha1 = leaf.der.replace(sha256_rsa, sha1_rsa)  # cryptography will not sign with SHA-1; relabel instead
    assert sha1 != leaf.der
    with pytest.raises(CertificateError, match="unsupported"):
        verify_chain([sha1], "127.0.0.1", STORE, NOW_S)


def test_name_constraints_refuse_the_chain_even_when_not_critical():
    """A name-constrained intermediate (the CA/Browser Forum lets its nameConstraints be
    non-critical) must not issue for names outside its constraint; this check cannot evaluate
    constraints, so any nameConstraints refuses the chain."""
    constraint = x509.NameConstraints(permitted_subtrees=[x509.DNSName("allowed.test")], excluded_subtrees=None)
    for critical in (False, True):
        middle = issue("middle", ROOT, ca=True, extra=((constraint, critical),))
        leaf = issue("leaf", middle, dns=("victim.test",))
        assert refused([leaf, middle], "victim.test") == "unsupported"


def _intermediate_with_rsa_key(modulus_bits: int, exponent: int) -> tuple[bytes, bytes]:
    """(leaf, intermediate) where ROOT certified an RSA key of that size and exponent (nobody holds
    its private key: the leaf's signature cannot verify, and checking it is the cost)."""
    import secrets

    from cryptography.hazmat.primitives.asymmetric import rsa

    from .https_support import Issued

    public = rsa.RSAPublicNumbers(exponent, secrets.randbits(modulus_bits) | (1 << modulus_bits - 1) | 1).public_key()
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "middle")])
    middle = (x509.CertificateBuilder().subject_name(subject).issuer_name(ROOT.cert.subject).public_key(public)
              .serial_number(1).not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ROOT.key, hashes.SHA256()))
    leaf = issue("leaf", Issued(middle, issue("other").key), ips=("127.0.0.1",))
    return leaf.der, middle.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(("bits", "exponent"), [(4096, (1 << 2048) + 1), (8200, 65537)], ids=["exponent", "modulus"])
def test_rsa_keys_too_costly_to_check_are_refused_before_any_arithmetic(bits, exponent):
    """A hostile server (or the exit, in the middle) sends intermediates with huge RSA exponents
    or moduli: each signature check is one pow(s, e, n), some 30 s for a 16384-bit e and n in
    CPython, several times that in a tab, and verify_chain tries every intermediate it was sent."""
    leaf, middle = _intermediate_with_rsa_key(bits, exponent)
    with pytest.raises(CertificateError) as caught:
        verify_chain([leaf, middle], "127.0.0.1", STORE, NOW_S)
    assert caught.value.reason == "unsupported"


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    head = bytes([size]) if size < 0x80 else bytes([0x80 | (size.bit_length() + 7) // 8]) + size.to_bytes(
        (size.bit_length() + 7) // 8, "big")
    return bytes([tag]) + head + content


def test_the_signed_algorithm_must_be_the_one_the_signature_is_checked_with():
    """RFC 5280 4.1.1.2: the outer signatureAlgorithm (unsigned) must equal the signature field
    inside the signed part; here the signed part says PKCS#1 v1.5 and the outer label PSS, with a
    valid PSS signature over it."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    leaf = issue("leaf", ROOT, ips=("127.0.0.1",))
    assert isinstance(ROOT.key, rsa.RSAPrivateKey)
    tbs = leaf.cert.tbs_certificate_bytes
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    raw = _resigned(leaf, ROOT, algorithm=hashes.SHA256(), rsa_padding=pss)
    start = raw.index(pss_tbs := x509.load_der_x509_certificate(raw).tbs_certificate_bytes) + len(pss_tbs)
    pss_alg = raw[start:start + 2 + raw[start + 1]]  # the AlgorithmIdentifier after the signed part
    signature = ROOT.key.sign(tbs, pss, hashes.SHA256())
    mixed = _der(0x30, tbs + pss_alg + _der(0x03, b"\x00" + signature))
    with pytest.raises(CertificateError) as caught:
        verify_chain([mixed], "127.0.0.1", STORE, NOW_S)
    assert caught.value.reason == "malformed"


def test_a_critical_flag_that_is_not_der_true_is_malformed_not_ignored():
    """DER's TRUE is 0xff; a BER-style 0x01 must not read as "not critical" (which would skip the
    refusal of a critical extension nobody here understands)."""
    odd = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    der = issue("leaf", ROOT, ips=("127.0.0.1",), extra=((odd, True),)).der
    marker = bytes.fromhex("06092b06010401868d1f010101ff")  # the OID, then BOOLEAN (01 01) TRUE (ff)
    assert der.count(marker[:-1]) == 1
    relabelled = der.replace(marker[:-1] + b"\xff", marker[:-1] + b"\x01")
    with pytest.raises(CertificateError) as caught:
        parse_certificate(relabelled)
    assert caught.value.reason == "malformed"


def test_an_intermediate_restricted_to_other_usages_cannot_vouch_for_a_tls_server():
    """An intermediate whose extendedKeyUsage leaves out serverAuth (an S/MIME-only CA, say) is not
    trusted for TLS servers by browsers, so its certificates for TLS servers are refused."""
    email_only = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION])
    middle = issue("middle", ROOT, ca=True, extra=((email_only, False),))
    assert refused([issue("leaf", middle, ips=("127.0.0.1",)), middle]) == "usage"
    tls_too = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION,
                                     x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    middle = issue("middle", ROOT, ca=True, extra=((tls_too, False),))
    verify_chain([issue("leaf", middle, ips=("127.0.0.1",)).der, middle.der], "127.0.0.1", STORE, NOW_S)


def test_an_extension_given_twice_is_malformed():
    """RFC 5280 4.2: at most one instance of an extension; with two subjectAltNames (or two
    basicConstraints) which one counts would be this parser's guess."""
    second = x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.99"),
                                        x509.SubjectAlternativeName([x509.DNSName("b.test")]).public_bytes())
    der = issue("leaf", ROOT, dns=("a.test",), extra=((second, False),)).der
    # cryptography builds no duplicate: relabel 2.5.29.99 as subjectAltName (2.5.29.17), same length
    unknown, san = bytes.fromhex("0603551d63"), bytes.fromhex("0603551d11")
    assert der.count(unknown) == 1
    with pytest.raises(CertificateError) as caught:
        parse_certificate(der.replace(unknown, san))
    assert caught.value.reason == "malformed"
