"""PeerIds and signed descriptors: every forgery or malformation is a typed error."""

import asyncio
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.descriptor import (
    CLOCK_SKEW,
    DOMAIN,
    MAX_DESCRIPTOR_SIZE,
    MAX_FAMILY,
    Capabilities,
    sign_descriptor,
    verify_descriptor,
)
from zmesh.encoding import pack_canonical, unpack_canonical
from zmesh.errors import ConfigError, CryptoError, ProtocolError
from zmesh.identity import Identity, PeerId

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def identity(provider):
    return asyncio.run(Identity.generate(provider))


def sign(provider, identity, **kwargs):
    kwargs.setdefault("now", NOW)
    return asyncio.run(sign_descriptor(provider, identity, **kwargs))


def verify(provider, raw, now=NOW + 10):
    return asyncio.run(verify_descriptor(provider, raw, now=now))


def test_peer_id_text_round_trips_and_catches_typos(identity):
    text = identity.peer_id.text
    assert len(text) == 56 and PeerId.from_text(text + ".mesh") == identity.peer_id
    typo = ("b" if text[5] != "b" else "c").join([text[:5], text[6:]])
    with pytest.raises(ConfigError, match="checksum|base32"):
        PeerId.from_text(typo)
    with pytest.raises(ConfigError):
        PeerId.from_text(text[:-1])


def test_identity_file_round_trip_and_corruption(provider, identity):
    again = asyncio.run(Identity.from_bytes(provider, identity.to_bytes()))
    assert again.peer_id == identity.peer_id and again.onion_keys == identity.onion_keys
    assert "ed25519" not in repr(identity) and identity.signing_key.hex() not in repr(identity)
    with pytest.raises(ConfigError):
        asyncio.run(Identity.from_bytes(provider, b"\x93garbage"))


def test_descriptor_round_trip(provider, identity):
    desc = sign(provider, identity, addresses={"ws": ("ws://127.0.0.1:9000",)},
                capabilities=Capabilities(exit=True, country="DE", bandwidth=10**6),
                exit_ports=((80, 80), (443, 443)))
    parsed = verify(provider, desc.raw)
    assert parsed == desc and parsed.raw == desc.raw
    assert parsed.allows_port(443) and not parsed.allows_port(22)


def test_forged_signature_is_rejected(provider, identity):
    body, signature = msgpack.unpackb(sign(provider, identity).raw)
    forged = pack_canonical([body, bytes([signature[0] ^ 1]) + signature[1:]])
    with pytest.raises(CryptoError, match="signature"):
        verify(provider, forged)


def test_descriptor_signed_by_another_key_is_rejected(provider, identity):
    other = asyncio.run(Identity.generate(provider))
    body, _ = msgpack.unpackb(sign(provider, identity).raw)
    stolen = asyncio.run(provider.ed25519_sign(other.signing_key, DOMAIN + body))
    with pytest.raises(CryptoError):
        verify(provider, pack_canonical([body, stolen]))


def test_expired_and_future_descriptors_are_rejected(provider, identity):
    desc = sign(provider, identity, lifetime=3600)
    with pytest.raises(CryptoError, match="expired"):
        verify(provider, desc.raw, now=NOW + 3600)
    with pytest.raises(CryptoError, match="future"):
        verify(provider, desc.raw, now=NOW - CLOCK_SKEW - 1)


def _resigned(provider, identity, mutate):
    body, _ = msgpack.unpackb(sign(provider, identity).raw)
    fields = unpack_canonical(body, max_size=MAX_DESCRIPTOR_SIZE, what="t")
    mutate(fields)
    body = pack_canonical(fields)
    signature = asyncio.run(provider.ed25519_sign(identity.signing_key, DOMAIN + body))
    return pack_canonical([body, signature])


@pytest.mark.parametrize("mutate, error", [
    (lambda f: f["onion"].__setitem__("x25519", b"\x00" * 31), CryptoError),
    (lambda f: f["onion"].__setitem__("mlkem768", b"\x00" * 1000), CryptoError),
    (lambda f: f.__setitem__("expires", f["published"] + 10 * 24 * 3600), ProtocolError),
    (lambda f: f.__setitem__("extra", 1), ProtocolError),
    (lambda f: f["caps"].__setitem__("country", "Germany"), ProtocolError),
    (lambda f: f.__setitem__("exit_ports", [[443, 80]]), ProtocolError),
    (lambda f: f.__setitem__("addresses", {"ws": ["x" * 300]}), ProtocolError),
    (lambda f: f.__setitem__("family", []), ProtocolError),  # an empty family is left out, not sent
    (lambda f: f.__setitem__("family", b"\x01" * 32), ProtocolError),
    (lambda f: f.__setitem__("family", [b"\x01" * 31]), ProtocolError),
    (lambda f: f.__setitem__("family", ["a" * 32]), ProtocolError),
    (lambda f: f.__setitem__("family", [b"\x01" * 32, b"\x01" * 32]), ProtocolError),
    (lambda f: f.__setitem__("family", [f["id"]]), ProtocolError),
    (lambda f: f.__setitem__("family", [bytes([i]) * 32 for i in range(MAX_FAMILY + 1)]), ProtocolError),
])
def test_well_signed_but_invalid_fields_are_rejected(provider, identity, mutate, error):
    with pytest.raises(error):
        verify(provider, _resigned(provider, identity, mutate))


def test_non_canonical_encoding_is_rejected(provider, identity):
    body, signature = msgpack.unpackb(sign(provider, identity).raw)
    # the same value with the body's length in a 4-byte (bin32) header instead of the shortest
    loose = b"\x92" + b"\xc6" + len(body).to_bytes(4, "big") + body + msgpack.packb(signature)
    assert msgpack.unpackb(loose) == [body, signature]
    with pytest.raises(ProtocolError, match="canonical"):
        verify(provider, loose)
    reordered = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(ProtocolError, match="canonical"):
        unpack_canonical(reordered, max_size=100, what="map")


def test_oversized_descriptor_is_rejected_before_parsing(provider):
    with pytest.raises(ProtocolError, match="limit"):
        verify(provider, b"\x00" * (MAX_DESCRIPTOR_SIZE + 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_verify_and_raise_typed_errors(provider, data):
    with pytest.raises((ProtocolError, CryptoError)):
        verify(provider, data, now=time.time())


def test_family_round_trips_and_an_empty_one_leaves_the_body_as_before(provider, identity):
    """Descriptor field ``family`` (docs/protocol.md): optional, so descriptors without it are the
    exact bytes older nodes sign and accept."""
    others = tuple(asyncio.run(Identity.generate(provider)).peer_id for _ in range(MAX_FAMILY))
    desc = verify(provider, sign(provider, identity, family=others).raw)
    assert desc.family == others
    plain = sign(provider, identity)
    body, _ = msgpack.unpackb(plain.raw)
    assert "family" not in unpack_canonical(body, max_size=MAX_DESCRIPTOR_SIZE, what="t")
    assert verify(provider, plain.raw).family == ()


@pytest.mark.parametrize("family", ["own", "repeated", "too many"])
def test_a_bad_family_of_ones_own_is_a_config_error(provider, identity, family):
    other = asyncio.run(Identity.generate(provider)).peer_id
    bad = {"own": (identity.peer_id,), "repeated": (other, other),
           "too many": tuple(PeerId(bytes([i]) * 32) for i in range(MAX_FAMILY + 1))}[family]
    with pytest.raises(ConfigError, match="family"):
        sign(provider, identity, family=bad)
