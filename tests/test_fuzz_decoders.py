"""Every decoder of untrusted input raises only ``ZmeshError`` (issue 19, defect 9).

One hypothesis test per target in ``tests/fuzz_targets.py`` (shared with ``bench/fuzz.py``, which
runs the same targets for a million inputs): random bytes, random text for text decoders, and
mutations of each target's valid samples. Plus the exact inputs the adversarial run found.
"""

from __future__ import annotations

import base64
import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_targets import Target, mutate, outcome, targets, world
from zmesh.descriptor import Capabilities
from zmesh.encoding import pack_canonical
from zmesh.errors import ConfigError

TARGETS = {target.name: target for target in targets()}


def _inputs(target: Target) -> st.SearchStrategy[bytes]:
    mutated = st.tuples(st.sampled_from(target.samples), st.randoms(use_true_random=False)).map(
        lambda pair: mutate(pair[0], pair[1]))
    strategies = [mutated, st.binary(max_size=2048), st.sampled_from(target.samples)]
    if target.is_text:
        strategies.append(st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")))
    return st.one_of(strategies)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_only_zmesh_errors_escape(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_inputs(target))
    def check(data: bytes) -> None:
        result = outcome(target, data)
        if isinstance(result, Exception):
            raise result

    check()


def test_every_sample_is_accepted() -> None:
    """A target whose samples are refused would fuzz only its first check."""
    refused = [t.name for t in TARGETS.values() for s in t.samples if outcome(t, s) != "accepted"]
    assert refused == []


def _refused(name: str, data: bytes) -> None:
    assert outcome(TARGETS[name], data) == "refused"


def test_found_by_the_adversarial_run() -> None:
    peer = world().identity.peer_id.text
    # canonical msgpack with mixed str/bytes map keys (was TypeError → POST /v1/descriptors 500)
    _refused("encoding.unpack_canonical", msgpack.packb({"a": 1, b"b": 2}, use_bin_type=True))
    _refused("descriptor.verify", pack_canonical([msgpack.packb({"v": 1, b"id": b""}, use_bin_type=True),
                                                  bytes(64)]))
    # deeper than re-encoding can recurse
    _refused("encoding.unpack_canonical", b"\x91" * 900 + b"\xc0")
    # PeerId text with padding (was IndexError → GET /v1/relays/{id} 500)
    _refused("identity.PeerId.from_text", (peer[:48] + "=" * 8).encode())
    _refused("identity.PeerId.from_text", ("ß" + peer[1:]).encode())
    # non-ASCII base64 from the server and from peers (was ValueError: crashed relays at start)
    _refused("signaling.parse_server_message", json.dumps({"type": "challenge", "nonce": "é" * 44}).encode())
    _refused("zmesh_signal.ws messages", json.dumps({"type": "auth", "peer_id": peer, "signature": "é"}).encode())
    # short relay bodies (was struct.error)
    _refused("cells.parse_relay_body", b"\x00" * 5)
    # key files of the wrong shape (was TypeError)
    _refused("keys.identity file", pack_canonical({"v": 1, "ed25519": 1, "x25519": 2, "mlkem768_seed": 3}))
    _refused("keys.identity file", pack_canonical([1, 2]))
    # a trailing newline passed patterns anchored with $
    _refused("streams.parse_target", b"example.com\n:80")
    # a config file that is not UTF-8 (was UnicodeDecodeError)
    _refused("config.load (TOML)", b'[relay]\ncountry = "\xff"\n')
    _refused("config.load (TOML)", "[relay]\ncountry = \"éé\"\n".encode())  # isalpha, but not A-Z
    # an HTTP status of 5,000 digits (was ValueError) and a URL with a bad port
    _refused("http.parse_response", b"HTTP/1.0 " + b"9" * 5000 + b" OK\r\n\r\n")
    _refused("http.parse_url", b"http://example.com:99999/")
    # a non-ASCII host or path (was UnicodeEncodeError in http_get, after the stream and TLS were up)
    _refused("http.parse_url", "http://bücher.example/".encode())
    # a Content-Length of latin-1 "²" passed str.isdigit (was ValueError from int())
    _refused("http.parse_response", b"HTTP/1.0 200 OK\r\nContent-Length: \xb2\r\n\r\nhi")
    _refused("http.parse_url", "https://example.com/ü".encode())


def test_a_country_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError):
        Capabilities(country="DE\n")


def test_a_challenge_we_would_sign_must_be_32_bytes() -> None:
    """The server chooses what we sign; a longer nonce could smuggle its own text into it."""
    _refused("signaling.parse_server_message", json.dumps(
        {"type": "challenge", "nonce": base64.b64encode(b"x" * 33).decode()}).encode())

