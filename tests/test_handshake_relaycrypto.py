"""Hybrid handshake (docs/protocol.md §4) and layered relay crypto (§5), against our vectors."""

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from zmesh.cells import BODY_SIZE, RelayCommand, encode_relay_body, parse_relay_body
from zmesh.errors import CryptoError, ProtocolError
from zmesh.handshake import (
    CREATE_SIZE,
    HopKeys,
    client_finish,
    client_start,
    server_respond,
)
from zmesh.identity import Identity
from zmesh.relaycrypto import HopCrypto, onion_decrypt, seal

VECTORS = Path(__file__).parent / "vectors"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def relay(provider):
    return run(Identity.generate(provider))


def test_handshake_agrees_on_keys(provider, relay):
    state = run(client_start(provider, relay.peer_id, relay.onion_keys))
    assert len(state.create_payload()) == CREATE_SIZE
    created, relay_keys = run(server_respond(provider, relay, state.create_payload()))
    assert run(client_finish(provider, state, created)) == relay_keys


def test_each_handshake_has_fresh_keys(provider, relay):
    keys = set()
    for _ in range(3):
        state = run(client_start(provider, relay.peer_id, relay.onion_keys))
        created, relay_keys = run(server_respond(provider, relay, state.create_payload()))
        keys.add(relay_keys.forward_key)
    assert len(keys) == 3


def test_impostor_relay_fails_auth(provider, relay):
    impostor = run(Identity.generate(provider))
    state = run(client_start(provider, relay.peer_id, relay.onion_keys))
    payload = impostor.peer_id.key + impostor.onion_keys.x25519 + state.create_payload()[64:]
    created, _ = run(server_respond(provider, impostor, payload))
    with pytest.raises(CryptoError, match="AUTH"):
        run(client_finish(provider, state, created))


def test_create_for_another_relay_is_refused(provider, relay):
    other = run(Identity.generate(provider))
    state = run(client_start(provider, other.peer_id, other.onion_keys))
    with pytest.raises(CryptoError):
        run(server_respond(provider, relay, state.create_payload()))


@pytest.mark.parametrize("offset", [0, 33, 70, 100, 63])
def test_any_tampered_reply_byte_fails(provider, relay, offset):
    state = run(client_start(provider, relay.peer_id, relay.onion_keys))
    created, _ = run(server_respond(provider, relay, state.create_payload()))
    if offset >= len(created):
        offset = len(created) - 1
    bad = bytearray(created)
    bad[offset] ^= 1
    with pytest.raises(CryptoError):
        run(client_finish(provider, state, bytes(bad)))


def test_tampered_ciphertext_changes_keys(provider, relay):
    state = run(client_start(provider, relay.peer_id, relay.onion_keys))
    payload = bytearray(state.create_payload())
    payload[-1] ^= 1  # ML-KEM implicit rejection: a different shared secret, not an error
    created, _ = run(server_respond(provider, relay, bytes(payload)))
    with pytest.raises(CryptoError):
        run(client_finish(provider, state, created))


def test_low_order_client_key_is_refused(provider, relay):
    state = run(client_start(provider, relay.peer_id, relay.onion_keys))
    payload = state.create_payload()[:64] + bytes(32) + state.create_payload()[96:]
    with pytest.raises(CryptoError):
        run(server_respond(provider, relay, payload))


@pytest.mark.parametrize("size", [0, CREATE_SIZE - 1, CREATE_SIZE + 1])
def test_wrong_sized_create_is_a_protocol_error(provider, relay, size):
    with pytest.raises(ProtocolError):
        run(server_respond(provider, relay, bytes(size)))


def _hops(provider, keys):
    return [HopCrypto(provider, k) for k in keys]


def _circuit(provider):
    keys = [HopKeys(*(bytes([i, j]) * 16 for j in range(4))) for i in range(3)]
    return _hops(provider, keys), _hops(provider, keys)


async def _backward(relays, origin_hop, bodies):
    """Hop ``origin_hop`` sends ``bodies`` back; every relay closer to the client adds its layer."""
    for body in bodies:
        seal(relays[origin_hop].backward_digest, body)
    data = b"".join(bodies)
    for index in range(origin_hop, -1, -1):
        data = await relays[index].backward.apply(data)
    return data


def test_backward_cells_are_attributed_to_their_hop(provider):
    client, relays = _circuit(provider)
    out = []
    for hop in (0, 2, 1, 2):
        body = encode_relay_body(RelayCommand.DATA, hop + 1, b"from %d" % hop)
        out.append(run(_backward(relays, hop, [body])))
    peeled = run(onion_decrypt(client, b"".join(out)))
    assert [(i, parse_relay_body(b).data) for i, b in peeled] == [
        (0, b"from 0"), (2, b"from 2"), (1, b"from 1"), (2, b"from 2")]


@pytest.mark.parametrize("position", [0, 1, 5, 8, 15, 16, 500, BODY_SIZE - 1])
def test_one_flipped_bit_anywhere_is_detected(provider, position):
    client, relays = _circuit(provider)
    data = bytearray(run(_backward(relays, 2, [encode_relay_body(RelayCommand.DATA, 1, b"secret")])))
    data[position] ^= 0x01
    assert run(onion_decrypt(client, bytes(data))) is None


def test_replayed_and_reordered_cells_are_detected(provider):
    client, relays = _circuit(provider)
    first = run(_backward(relays, 2, [encode_relay_body(RelayCommand.DATA, 1, b"one")]))
    second = run(_backward(relays, 2, [encode_relay_body(RelayCommand.DATA, 1, b"two")]))
    assert run(onion_decrypt(client, second)) is None  # reordered: second before first
    client, relays = _circuit(provider)
    first = run(_backward(relays, 2, [encode_relay_body(RelayCommand.DATA, 1, b"one")]))
    assert run(onion_decrypt(client, first)) is not None
    assert run(onion_decrypt(client, first)) is None  # replayed


def test_hop_keys_never_appear_in_repr(provider):
    keys = HopKeys(b"k" * 32, b"l" * 32, b"m" * 32, b"n" * 32)
    assert "kkkk" not in repr(keys) and "kkkk" not in repr(replace(keys))
