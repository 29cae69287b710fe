"""The native CryptoProvider against the shared vector files (the browser runs the same checker)."""

import asyncio
import json
from pathlib import Path

import pytest

from zmesh.crypto.provider import CheckedProvider
from zmesh.errors import CryptoError
from zmesh.selfcheck import CHECKS, check_vectors

VECTORS = Path(__file__).parent / "vectors"


def run(coro):
    return asyncio.run(coro)


def test_every_vector_file_has_a_checker():
    assert {p.name for p in VECTORS.glob("*.json")} == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_vector_file(provider, name):
    data = json.loads((VECTORS / name).read_text())
    count, failures = run(check_vectors(provider, {name: data}))
    assert failures == [] and count == sum(len(data[key]) for key, _ in CHECKS[name]) and count > 0


def test_a_wrong_vector_is_reported(provider):
    data = json.loads((VECTORS / "hkdf_sha256_rfc5869.json").read_text())
    data["cases"][0]["okm"] = "00" * data["cases"][0]["length"]
    count, failures = run(check_vectors(provider, {"hkdf_sha256_rfc5869.json": data}))
    assert len(failures) == 1 and "test case 1" in failures[0]


def test_mlkem768_round_trip_and_sizes(provider):
    seed, public = run(provider.mlkem768_generate())
    ciphertext, secret = run(provider.mlkem768_encapsulate(public))
    assert run(provider.mlkem768_decapsulate(seed, ciphertext)) == secret
    with pytest.raises(CryptoError):
        run(provider.mlkem768_encapsulate(public[:-1]))
    with pytest.raises(CryptoError):
        run(provider.mlkem768_decapsulate(seed, ciphertext[:-1]))


def test_aes_gcm_and_ctr_stream(provider):
    key, nonce = bytes(range(32)), bytes(12)
    sealed = run(provider.aes256_gcm_encrypt(key, nonce, b"cell", b"aad"))
    assert run(provider.aes256_gcm_decrypt(key, nonce, sealed, b"aad")) == b"cell"
    with pytest.raises(CryptoError):
        run(provider.aes256_gcm_decrypt(key, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad"))
    whole = run(provider.aes256_ctr_stream(key, bytes(16)).apply(bytes(100)))
    split = provider.aes256_ctr_stream(key, bytes(16))
    assert run(split.apply(bytes(37))) + run(split.apply(bytes(63))) == whole


def test_bad_key_sizes_are_crypto_errors(provider):
    with pytest.raises(CryptoError):
        run(provider.x25519(bytes(31), bytes(32)))
    with pytest.raises(CryptoError):
        run(provider.x25519(bytes(range(32)), bytes(32)))  # low-order point
    assert not run(provider.ed25519_verify(bytes(31), bytes(64), b"m"))


BAD_ARGUMENTS = [
    ("x25519_public", (bytes(31),)), ("x25519", (bytes(32), bytes(33))), ("ed25519_public", ("x" * 32,)),
    ("ed25519_sign", (bytes(33), b"m")), ("mlkem768_public", (bytes(63),)), ("mlkem768_encapsulate", (bytes(1183),)),
    ("mlkem768_decapsulate", (bytes(64), bytes(1087))), ("mldsa65_public", (bytes(31),)),
    ("mldsa65_sign", (bytes(33), b"m")), ("hkdf_sha256", (b"k", b"", b"", 0)),
    ("hkdf_sha256", (b"k", b"", b"", 8161)), ("aes256_gcm_encrypt", (bytes(32), bytes(11), b"p")),
    ("aes256_gcm_decrypt", (bytes(31), bytes(12), b"c")),
]


@pytest.mark.parametrize(("method", "args"), BAD_ARGUMENTS)
def test_the_shared_checks_refuse_bad_arguments_before_any_primitive(method, args):
    """Issue 10: the argument checks live once, in ``CheckedProvider``, for both providers. The bare
    base has no primitives (each raises ``NotImplementedError``), so a ``CryptoError`` here comes
    from the checks alone, before any primitive could run."""
    checked = CheckedProvider()
    with pytest.raises(CryptoError):
        run(getattr(checked, method)(*args))
    with pytest.raises(CryptoError):
        checked.aes256_ctr_stream(bytes(32), bytes(15))
    assert not run(checked.ed25519_verify(bytes(32), bytes(63), b"m"))
    assert not run(checked.mldsa65_verify(bytes(1952), bytes(3308), b"m"))


def test_mldsa65_signs_and_refuses_a_changed_message_or_key(provider):
    seed, public = run(provider.mldsa65_generate())
    signature = run(provider.mldsa65_sign(seed, b"consensus"))
    assert run(provider.mldsa65_verify(public, signature, b"consensus"))
    assert not run(provider.mldsa65_verify(public, signature, b"consensus!"))
    _, other = run(provider.mldsa65_generate())
    assert not run(provider.mldsa65_verify(other, signature, b"consensus"))
    assert not run(provider.mldsa65_verify(bytes(1952), signature, b"consensus"))

