"""Tor's key blinding (rend-spec-v3 appendix A.2) in ``zmesh.onion.blinding``: Tor's own test
vectors, signatures the native provider verifies, unlinkable periods, and hostile keys refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from zmesh.errors import ConfigError, CryptoError
from zmesh.onion import blinding, edwards

VECTORS = json.loads((Path(__file__).parent / "vectors" / "onion" / "tor_key_blinding.json").read_text())
HOUR = 3600


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("case", VECTORS["blind_with_param"], ids=lambda c: c["param"][:8])
def test_blinding_matches_tor_vectors(provider, case):
    """ed25519_exts_ref.py's vectors: seed expansion, h·A and (h·a mod l, prefix')."""
    seed, param = bytes.fromhex(case["seed"]), bytes.fromhex(case["param"])
    scalar, prefix = blinding.expand_seed(seed)
    expanded = bytes.fromhex(case["expanded"])
    assert (scalar, prefix) == (int.from_bytes(expanded[:32], "little"), expanded[32:])
    assert run(provider.ed25519_public(seed)).hex() == case["public"]
    blinded = blinding.blind_public_with(bytes.fromhex(case["public"]), param)
    assert blinded.hex() == case["blinded_public"]
    b_scalar, b_prefix = blinding.blind_expanded(scalar, prefix, param)
    assert (b_scalar.to_bytes(32, "little") + b_prefix).hex() == case["blinded_expanded"]
    assert edwards.scalar_mult_base(b_scalar) == blinded
    assert run(provider.ed25519_verify(blinded, blinding.sign_expanded(b_scalar, b_prefix, b"hello world"),
                                       b"hello world"))


def test_rend_spec_a2_period_derivation_matches_c_tor():
    """C tor's vector (via Arti's key_blinding_testvec): period number, h, A', subcredential and
    the blinded expanded key, from the public key and a time."""
    case = VECTORS["rend_spec_a2"][0]
    public, expanded = bytes.fromhex(case["public"]), bytes.fromhex(case["expanded"])
    period = blinding.time_period(case["now_unix"], case["period_length"])
    assert period == case["period"]
    param = blinding.blinding_factor(public, period, case["period_length"])
    assert param.hex() == case["blinding_factor"]
    blinded = blinding.blind_public(public, period, case["period_length"])
    assert blinded.hex() == case["blinded_public"]
    assert blinding.subcredential(public, blinded).hex() == case["subcredential"]
    scalar, prefix = blinding.blind_expanded(int.from_bytes(expanded[:32], "little"), expanded[32:], param)
    assert (scalar.to_bytes(32, "little") + prefix).hex() == case["blinded_expanded"]


def test_blinded_signature_verifies_under_the_blinded_key_only(provider):
    seed, public = run(provider.ed25519_generate())
    signature = blinding.blinded_sign(seed, 7, HOUR, b"descriptor")
    assert len(signature) == 64
    blinded = blinding.blind_public(public, 7, HOUR)
    assert run(provider.ed25519_verify(blinded, signature, b"descriptor"))
    assert not run(provider.ed25519_verify(blinded, signature, b"descriptoR"))
    assert not run(provider.ed25519_verify(public, signature, b"descriptor"))
    assert not run(provider.ed25519_verify(blinding.blind_public(public, 8, HOUR), signature, b"descriptor"))


def test_periods_give_unrelated_keys(provider):
    """Two periods' keys differ, and neither is the service key nor a fixed multiple of the other:
    linking them needs h of each, which needs the service key (the address)."""
    seed, public = run(provider.ed25519_generate())
    _, other = run(provider.ed25519_generate())
    one, two = (blinding.blind_public(public, n, HOUR) for n in (100, 101))
    assert len({one, two, public}) == 3
    # The ratio between consecutive periods' keys is not the same for two services.
    ratio = [blinding._clamp(blinding.blinding_factor(k, 101, HOUR)) * pow(
        blinding._clamp(blinding.blinding_factor(k, 100, HOUR)), -1, edwards.L) % edwards.L for k in (public, other)]
    assert ratio[0] != ratio[1]
    assert blinding.blind_public(public, 100, 2 * HOUR) != one  # the period length is an input too


def test_time_periods():
    start = blinding.period_start(500, HOUR)
    assert blinding.time_period(start, HOUR) == 500
    assert blinding.time_period(start - 0.001, HOUR) == 499
    assert blinding.time_period(start + HOUR - 1, HOUR) == 500
    assert blinding.time_period(blinding.ROTATION_OFFSET, 86400) == 0  # days start at 12:00 UTC, as Tor's


@pytest.mark.parametrize("length", [0, 59, 61, 90.0, True, blinding.MAX_PERIOD + 60, -3600])
def test_bad_period_lengths_are_config_errors(length):
    with pytest.raises(ConfigError, match="period_length"):
        blinding.time_period(1e9, length)


def _small_order_points() -> list[bytes]:
    """The 8 points of order dividing 8 (the torsion subgroup), as multiples of a point of order 8."""
    found = {edwards.encode(edwards.IDENTITY)}
    t8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
    point = edwards.decode(t8)
    acc = point
    for _ in range(8):
        found.add(edwards.encode(acc))
        acc = edwards.add(acc, point)
    assert len(found) == 8
    return sorted(found)


@pytest.mark.parametrize("bad", _small_order_points())
def test_small_order_keys_are_refused(bad):
    with pytest.raises(CryptoError, match="small-order"):
        blinding.blind_public(bad, 1, HOUR)


def test_mixed_order_and_non_canonical_keys_are_refused(provider):
    _, public = run(provider.ed25519_generate())
    torsion = edwards.decode(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"))
    mixed = edwards.encode(edwards.add(edwards.decode(public), torsion))
    with pytest.raises(CryptoError, match="prime-order"):
        blinding.blind_public(mixed, 1, HOUR)
    non_canonical = (edwards.P + 1).to_bytes(32, "little")  # y = p + 1 encodes y = 1 a second way
    with pytest.raises(CryptoError, match="canonical"):
        blinding.blind_public(non_canonical, 1, HOUR)
    with pytest.raises(CryptoError, match="canonical"):
        blinding.blind_public(b"\x01" + bytes(30) + b"\x80", 1, HOUR)  # y = 1 (so x = 0) with the sign bit set
    with pytest.raises(CryptoError):
        blinding.blind_public(bytes(31), 1, HOUR)
    with pytest.raises(CryptoError, match="not an Ed25519 point"):
        blinding.blind_public((2).to_bytes(32, "little"), 1, HOUR)  # y = 2 has no x on the curve
