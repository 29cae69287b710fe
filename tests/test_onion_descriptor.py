"""Onion-service descriptors (docs/onion-services.md, "Descriptor format", "Client authorisation"):
sealed by the service, checked by a store that cannot read them, opened only with the address
(and, for a restricted service, a listed client key). Hostile blobs raise only our errors."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_targets import mutate
from zmesh.encoding import pack_canonical
from zmesh.errors import ConfigError, CryptoError, OnionAuthError, ProtocolError, ZmeshError
from zmesh.identity import Identity
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.onion import blinding, descriptor
from zmesh.onion.address import encode_address
from zmesh.onion.descriptor import (
    MAX_AUTHORIZED_CLIENTS,
    MAX_INTRO_POINTS,
    MAX_SEALED_SIZE,
    IntroPoint,
    ServiceDescriptor,
    check_sealed,
    open_descriptor,
    seal_descriptor,
)

NOW = 1_800_000_000.0
HOUR = 3600
PROVIDER = NativeCryptoProvider()


def run(coro):
    return asyncio.run(coro)


def _content(n: int = 3) -> ServiceDescriptor:
    relays = [run(Identity.generate(PROVIDER)).peer_id.text for _ in range(n)]
    return ServiceDescriptor(tuple(IntroPoint(r, bytes([i]) * 32) for i, r in enumerate(relays)),
                             run(PROVIDER.x25519_generate())[1], run(PROVIDER.mlkem768_generate())[1])


SEED, PUBLIC = run(PROVIDER.ed25519_generate())
ADDRESS = encode_address(PUBLIC)
CONTENT = _content()
SEALED = run(seal_descriptor(PROVIDER, SEED, CONTENT, now=NOW, revision=5))


def _seal(**kwargs) -> bytes:
    args = {"now": NOW, "revision": 5, **kwargs}
    return run(seal_descriptor(PROVIDER, SEED, args.pop("content", CONTENT), **args)).blob


def test_round_trip_and_what_the_store_sees():
    assert run(open_descriptor(PROVIDER, ADDRESS, SEALED.blob, now=NOW + 60)) == CONTENT
    info = run(check_sealed(PROVIDER, SEALED.blob, now=NOW + 60))
    period = blinding.time_period(NOW, blinding.DEFAULT_PERIOD)
    assert info == (blinding.blind_public(PUBLIC, period, blinding.DEFAULT_PERIOD), 5,
                    int(NOW + descriptor.DEFAULT_LIFETIME), period, blinding.DEFAULT_PERIOD)
    assert info.blinded_key == SEALED.blinded_key
    # Neither the service key nor any intro point's relay or key appears in the bytes the store holds.
    for secret in (PUBLIC, CONTENT.x25519_public, CONTENT.mlkem768_public[:64],
                   *(p.relay_id.encode() for p in CONTENT.intro_points), *(p.auth_key for p in CONTENT.intro_points)):
        assert secret not in SEALED.blob


def test_next_period_descriptor_opens_under_its_own_key():
    period = blinding.time_period(NOW, HOUR) + 1
    sealed = run(seal_descriptor(PROVIDER, SEED, CONTENT, now=NOW, revision=1, period_length=HOUR, period=period))
    assert sealed.blinded_key == blinding.blind_public(PUBLIC, period, HOUR) != \
        blinding.blind_public(PUBLIC, period - 1, HOUR)
    assert run(open_descriptor(PROVIDER, ADDRESS, sealed.blob, now=NOW, period_length=HOUR)) == CONTENT


def test_size_hides_the_intro_point_count_and_worst_case_fits():
    sizes = {len(_seal(content=_content(n))) for n in range(1, MAX_INTRO_POINTS + 1)}
    assert sizes == {len(SEALED.blob)}
    clients = [run(PROVIDER.x25519_generate())[1] for _ in range(MAX_AUTHORIZED_CLIENTS)]
    worst = _seal(content=_content(MAX_INTRO_POINTS), authorized_clients=clients)
    assert len(worst) <= MAX_SEALED_SIZE
    assert len(_seal(authorized_clients=clients[:3])) == len(SEALED.blob)  # up to 16 clients: same size as none


def test_another_address_or_period_length_cannot_open_it():
    _, other = run(PROVIDER.ed25519_generate())
    with pytest.raises(CryptoError, match="not for this address"):
        run(open_descriptor(PROVIDER, encode_address(other), SEALED.blob, now=NOW))
    with pytest.raises(ProtocolError, match="periods"):
        run(open_descriptor(PROVIDER, ADDRESS, SEALED.blob, now=NOW, period_length=HOUR))


@pytest.mark.parametrize(("now", "words"), [
    (NOW + descriptor.DEFAULT_LIFETIME, "expired"),
    (NOW - descriptor.MAX_LIFETIME, "expires more than"),
])
def test_times_are_checked(now, words):
    for check in (lambda: check_sealed(PROVIDER, SEALED.blob, now=now),
                  lambda: open_descriptor(PROVIDER, ADDRESS, SEALED.blob, now=now)):
        with pytest.raises(CryptoError, match=words):
            run(check())


def test_a_period_far_from_now_is_refused():
    period = blinding.time_period(NOW, HOUR) + 2
    blob = run(seal_descriptor(PROVIDER, SEED, CONTENT, now=NOW, revision=1, period_length=HOUR, period=period)).blob
    with pytest.raises(CryptoError, match="time period"):
        run(check_sealed(PROVIDER, blob, now=NOW))


def test_forged_or_edited_blobs_are_refused():
    body, signature = msgpack.unpackb(SEALED.blob)
    fields = msgpack.unpackb(body)
    edited = pack_canonical([pack_canonical({**fields, "revision": 6}), signature])
    with pytest.raises(CryptoError, match="signature"):
        run(check_sealed(PROVIDER, edited, now=NOW))
    # Re-signed by a key of the attacker's own: the store accepts it under that key, but it is not
    # the service's, so no client of the address will take it.
    forged = run(seal_descriptor(PROVIDER, run(PROVIDER.ed25519_generate())[0], CONTENT, now=NOW, revision=9))
    assert run(check_sealed(PROVIDER, forged.blob, now=NOW)).blinded_key != SEALED.blinded_key
    with pytest.raises(CryptoError, match="not for this address"):
        run(open_descriptor(PROVIDER, ADDRESS, forged.blob, now=NOW))


def test_oversized_blob_is_refused_before_decoding():
    with pytest.raises(ProtocolError, match="limit"):
        run(check_sealed(PROVIDER, SEALED.blob + bytes(MAX_SEALED_SIZE), now=NOW))


class TestClientAuthorisation:
    CLIENTS = [run(PROVIDER.x25519_generate()) for _ in range(3)]
    BLOB = _seal(authorized_clients=[public for _, public in CLIENTS])

    def test_each_listed_client_opens_it(self):
        for secret, _ in self.CLIENTS:
            assert run(open_descriptor(PROVIDER, ADDRESS, self.BLOB, now=NOW, client_secret=secret)) == CONTENT

    def test_no_key_or_an_unlisted_key_is_not_authorised(self):
        with pytest.raises(OnionAuthError, match="no client key"):
            run(open_descriptor(PROVIDER, ADDRESS, self.BLOB, now=NOW))
        stranger, _ = run(PROVIDER.x25519_generate())
        with pytest.raises(OnionAuthError, match="not authorised"):
            run(open_descriptor(PROVIDER, ADDRESS, self.BLOB, now=NOW, client_secret=stranger))
        assert not issubclass(OnionAuthError, ProtocolError | CryptoError)  # distinct from "malformed"

    def test_a_client_key_also_opens_an_open_service(self):
        secret = self.CLIENTS[0][0]
        assert run(open_descriptor(PROVIDER, ADDRESS, SEALED.blob, now=NOW, client_secret=secret)) == CONTENT

    def test_the_store_sees_the_same_shape_either_way(self):
        assert len(self.BLOB) == len(SEALED.blob)
        assert run(check_sealed(PROVIDER, self.BLOB, now=NOW)).blinded_key == SEALED.blinded_key


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"revision": -1}, "revision"), ({"revision": 2**64}, "revision"), ({"lifetime": 0}, "lifetime"),
    ({"lifetime": descriptor.MAX_LIFETIME + 1}, "lifetime"), ({"period_length": 100}, "period_length"),
    ({"authorized_clients": [bytes(32)] * (MAX_AUTHORIZED_CLIENTS + 1)}, "at most"),
    ({"authorized_clients": [bytes(31)]}, "X25519"),
])
def test_bad_seal_arguments_are_config_errors(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        _seal(**kwargs)


def test_content_is_validated():
    with pytest.raises(ConfigError):
        IntroPoint("not a peer id", bytes(32))
    with pytest.raises(ConfigError, match="auth_key"):
        IntroPoint(CONTENT.intro_points[0].relay_id, bytes(31))
    with pytest.raises(ConfigError, match="intro points"):
        dataclasses.replace(CONTENT, intro_points=())
    with pytest.raises(ConfigError, match="intro points"):
        dataclasses.replace(CONTENT, intro_points=CONTENT.intro_points * 4)
    with pytest.raises(ConfigError, match="mlkem768"):
        dataclasses.replace(CONTENT, mlkem768_public=bytes(32))


# ---------------------------------------------------------------------- hostile bytes

_FUZZ = settings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _only_our_errors(call) -> None:
    try:
        run(call())
    except ZmeshError:
        pass


def _mutations(sample: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=4096), st.randoms(use_true_random=False).map(lambda r: mutate(sample, r)))


@_FUZZ
@given(_mutations(SEALED.blob))
def test_fuzzed_blobs_raise_only_zmesh_errors(data):
    _only_our_errors(lambda: check_sealed(PROVIDER, data, now=NOW))
    _only_our_errors(lambda: open_descriptor(PROVIDER, ADDRESS, data, now=NOW))


def _inner_sample() -> bytes:
    return descriptor._padded({"intro": [[p.relay_id, p.auth_key] for p in CONTENT.intro_points],
                               "x25519": CONTENT.x25519_public, "mlkem768": CONTENT.mlkem768_public},
                              descriptor.INNER_SIZE)


def _outer_sample() -> bytes:
    return pack_canonical({"ephemeral": bytes(32), "clients": [[bytes(8), bytes(48)]] * 16, "inner": b"x"})


@_FUZZ
@given(st.one_of(_mutations(_inner_sample()), _mutations(_outer_sample())))
def test_fuzzed_plaintext_layers_raise_only_protocol_errors(data):
    """The decoders behind the encryption, which only the service (or a thief of the address) can reach."""
    for parse in (descriptor._parse_inner, descriptor._parse_outer):
        try:
            parse(data)
        except ProtocolError:
            pass


def test_plaintext_samples_parse():
    assert descriptor._parse_inner(_inner_sample()) == CONTENT
    assert descriptor._parse_outer(_outer_sample())["inner"] == b"x"


def test_mutated_blob_never_changes_what_opens():
    """Any edit that still opens must be the original: the signature and GCM tags cover every byte."""
    rng = random.Random(7)
    for _ in range(200):
        data = mutate(SEALED.blob, rng)
        try:
            assert run(open_descriptor(PROVIDER, ADDRESS, data, now=NOW)) == CONTENT
        except ZmeshError:
            continue
