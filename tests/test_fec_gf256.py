"""GF(2^8) field and whole-symbol kernels (zmesh.fec.gf256): every fast path equals the byte-wise
definition."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.fec.gf256 import TABLES, SymbolKernel, coefficients, inv, mul


def slow_mul(a: int, b: int) -> int:
    """Carry-less multiply and reduce by 0x11D, bit by bit: the definition."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return product


def test_tables_match_the_definition():
    for a in range(256):
        assert TABLES[a] == bytes(slow_mul(a, b) for b in range(256))
        assert all(mul(a, b) == TABLES[a][b] for b in range(256))


def test_inverses_and_zero():
    assert all(mul(a, inv(a)) == 1 for a in range(1, 256))
    with pytest.raises(ZeroDivisionError):
        inv(0)


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
def test_field_laws(a, b, c):
    assert mul(a, mul(b, c)) == mul(mul(a, b), c)
    assert mul(a, b ^ c) == mul(a, b) ^ mul(a, c)
    assert mul(a, b) == mul(b, a)


@given(st.binary(min_size=16, max_size=300), st.integers(0, 255))
def test_scale_and_double_are_bytewise(data, c):
    kernel = SymbolKernel(len(data))
    value = kernel.to_int(data)
    assert kernel.to_bytes(kernel.scale(value, c)) == bytes(mul(c, x) for x in data)
    assert kernel.to_bytes(kernel.double(value)) == bytes(mul(2, x) for x in data)


@settings(max_examples=60)
@given(st.integers(16, 200).flatmap(
    lambda size: st.tuples(st.just(size), st.lists(st.binary(min_size=size, max_size=size), max_size=40))),
    st.randoms(use_true_random=False))
def test_combine_is_the_sum_of_products(size_and_symbols, rnd):
    """Both paths of combine (per-term below 6 terms, bit-sliced above) equal Σ cᵢ·xᵢ byte-wise."""
    size, symbols = size_and_symbols
    kernel = SymbolKernel(size)
    factors = bytes(rnd.randrange(256) for _ in symbols)
    expected = bytearray(size)
    for symbol, c in zip(symbols, factors, strict=True):
        for i, x in enumerate(symbol):
            expected[i] ^= mul(c, x)
    got = kernel.combine([kernel.to_int(s) for s in symbols], factors)
    assert kernel.to_bytes(got) == bytes(expected)


def test_coefficients_are_deterministic_nonzero_and_seeded():
    assert coefficients(42, 300) == coefficients(42, 300)
    assert len(coefficients(7, 4096)) == 4096 and 0 not in coefficients(7, 4096)
    assert coefficients(1, 32) != coefficients(2, 32)
    assert coefficients(9, 100)[:10] == coefficients(9, 10)  # a prefix: count does not change the stream
