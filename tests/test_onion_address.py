"""``.mesh`` onion-service addresses (docs/onion-services.md, "Addresses"): round trip, the
spellings accepted, and every way a typed or hostile address is refused with ``OnionAddressError``."""

from __future__ import annotations

import pytest

from zmesh.errors import OnionAddressError, ProtocolError
from zmesh.identity import PeerId
from zmesh.onion.address import decode_address, encode_address, is_mesh_name

KEY = bytes(range(32))
ADDRESS = encode_address(KEY)


def test_round_trip_and_layout():
    assert ADDRESS.endswith(".mesh") and len(ADDRESS) == 56 + 5 and ADDRESS == ADDRESS.lower()
    assert decode_address(ADDRESS) == KEY
    assert ADDRESS == PeerId(KEY).text + ".mesh"  # one text form for 32-byte keys (rend-spec-v3 §6 layout)


@pytest.mark.parametrize("spelling", [ADDRESS.upper(), ADDRESS + ".", ADDRESS.upper() + "."])
def test_upper_case_and_a_trailing_dot_are_accepted(spelling):
    assert decode_address(spelling) == KEY


def test_every_single_character_typo_is_caught():
    """The 2-byte checksum catches each of the 56 × 31 one-letter substitutions of this address."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    caught = 0
    for i in range(56):
        for letter in alphabet:
            if letter == ADDRESS[i]:
                continue
            with pytest.raises(OnionAddressError):
                decode_address(ADDRESS[:i] + letter + ADDRESS[i + 1:])
            caught += 1
    assert caught == 56 * 31


@pytest.mark.parametrize(("text", "words"), [
    (ADDRESS[:-5], "ends in .mesh"),
    (ADDRESS[:-5] + ".onion", "ends in .mesh"),
    (ADDRESS[1:], "56 base32 characters"),
    ("a" + ADDRESS, "56 base32 characters"),
    ("www." + ADDRESS, "56 base32 characters"),
    (ADDRESS[:-6] + "1.mesh", "outside base32"),
    (ADDRESS[:10] + "=" + ADDRESS[11:], "outside base32"),
    ("ä" + ADDRESS[1:], "ASCII"),
    (".mesh", "56 base32 characters"),
    ("", "ends in .mesh"),
])
def test_malformed_addresses_are_refused(text, words):
    with pytest.raises(OnionAddressError, match=words):
        decode_address(text)


def test_checksum_and_version_errors_say_which():
    with pytest.raises(OnionAddressError, match="mistyped"):
        decode_address(ADDRESS[:53] + ("a" if ADDRESS[53] != "a" else "b") + ADDRESS[54:])
    import base64
    import hashlib

    raw = KEY + hashlib.sha3_256(b".mesh checksum" + KEY + b"\x02").digest()[:2] + b"\x02"
    with pytest.raises(OnionAddressError, match="version 2"):
        decode_address(base64.b32encode(raw).decode().lower() + ".mesh")


def test_errors_are_protocol_errors_and_non_text_is_refused():
    assert issubclass(OnionAddressError, ProtocolError)
    with pytest.raises(OnionAddressError):
        decode_address(b"x.mesh")  # type: ignore[arg-type]
    with pytest.raises(OnionAddressError):
        encode_address(bytes(31))


@pytest.mark.parametrize(("host", "expected"), [
    (ADDRESS, True), (ADDRESS.upper() + ".", True), ("anything.mesh", True), ("a.b.MESH", True),
    ("example.com", False), ("mesh", False), ("notmesh", False), ("x.mesh.com", False), ("", False),
])
def test_is_mesh_name(host, expected):
    assert is_mesh_name(host) is expected
