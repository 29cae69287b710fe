"""The native CryptoProvider against the shared vector files (the browser provider runs the same)."""

import asyncio
import json
from pathlib import Path

import pytest

from zmesh.errors import CryptoError

VECTORS = Path(__file__).parent / "vectors"


def cases(name, key="cases"):
    data = json.loads((VECTORS / name).read_text())
    return [pytest.param(case, id=case["name"]) for case in data[key]]


def h(value):
    return bytes.fromhex(value)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("case", cases("x25519_rfc7748.json"))
def test_x25519(provider, case):
    assert run(provider.x25519(h(case["private"]), h(case["peer_public"]))) == h(case["shared"])


@pytest.mark.parametrize("case", cases("x25519_rfc7748.json", "keypairs"))
def test_x25519_public(provider, case):
    assert run(provider.x25519_public(h(case["private"]))) == h(case["public"])


@pytest.mark.parametrize("case", cases("ed25519_rfc8032.json"))
def test_ed25519(provider, case):
    secret, public, message = h(case["secret"]), h(case["public"]), h(case["message"])
    assert run(provider.ed25519_public(secret)) == public
    assert run(provider.ed25519_sign(secret, message)) == h(case["signature"])
    assert run(provider.ed25519_verify(public, h(case["signature"]), message))
    assert not run(provider.ed25519_verify(public, h(case["signature"]), message + b"x"))


@pytest.mark.parametrize("case", cases("hkdf_sha256_rfc5869.json"))
def test_hkdf_sha256(provider, case):
    okm = run(provider.hkdf_sha256(h(case["ikm"]), h(case["salt"]), h(case["info"]), case["length"]))
    assert okm == h(case["okm"])


@pytest.mark.parametrize("case", cases("mlkem768_keygen.json"))
def test_mlkem768_keygen(provider, case):
    assert run(provider.mlkem768_public(h(case["d"]) + h(case["z"]))) == h(case["ek"])


@pytest.mark.parametrize("case", cases("mlkem768_encap_decap.json"))
def test_mlkem768_decapsulate(provider, case):
    assert run(provider.mlkem768_decapsulate(h(case["d"]) + h(case["z"]), h(case["c"]))) == h(case["k"])


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
