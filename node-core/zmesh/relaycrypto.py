"""Layered relay crypto (docs/protocol.md §5): one AES-256-CTR layer and one running digest per hop.

Each hop holds, per direction, a *stateful* AES-256-CTR keystream and a running SHA-256 seeded
from the handshake. The sender of a relay body writes the first 8 bytes of its running digest
(over every body it sent that hop, digest field zeroed) into the body, then the client adds or the
relays remove one CTR layer per hop. The hop a body is meant for sees ``recognized == 0`` and a
digest that matches its own running digest.

Because the keystream and the digest both run over the whole circuit history, a tampered, forged,
dropped, replayed or reordered cell makes the digest fail at its destination; the circuit is then
torn down (Tor's "tor1" relay crypto, with AES-256 and SHA-256 instead of AES-128 and SHA-1).
Keystreams continue across calls, so a whole batch of cells costs one provider call per layer.

Every layer operation lives here: the origin's ``onion_encrypt``/``onion_decrypt``, a relay's
``relay_forward``/``relay_backward`` and an edge's ``edge_seal``; ``cells.relay_cells`` then turns
the result into RELAY cells.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .cells import BODY_SIZE, DIGEST_SLICE, split_bodies

if TYPE_CHECKING:
    from .crypto.provider import CryptoProvider
    from .handshake import HopKeys

_ZERO_IV = bytes(16)
_BINDING = b"zmesh-circuit-binding-v1"
_ZERO_DIGEST = bytes(8)


class HopCrypto:
    """The session state shared by the client and one hop of its circuit.

    ``binding`` is a value only the two ends of this hop know, fixed by its handshake: what an
    ESTABLISH_INTRO signs, so the signature is worthless on any other circuit (zmesh.points)."""

    __slots__ = ("forward", "backward", "forward_digest", "backward_digest", "binding")

    def __init__(self, provider: CryptoProvider, keys: HopKeys) -> None:
        self.forward = provider.aes256_ctr_stream(keys.forward_key, _ZERO_IV)
        self.backward = provider.aes256_ctr_stream(keys.backward_key, _ZERO_IV)
        self.forward_digest = hashlib.sha256(keys.forward_digest)
        self.backward_digest = hashlib.sha256(keys.backward_digest)
        self.binding = hashlib.sha256(_BINDING + keys.forward_digest + keys.backward_digest).digest()


def seal(running: hashlib._Hash, body: bytearray) -> None:
    """Fill in the digest of a plaintext body (its digest field is zero) and advance ``running``."""
    running.update(body)
    body[DIGEST_SLICE] = running.digest()[:8]


def recognize(running: hashlib._Hash, body: bytes) -> hashlib._Hash | None:
    """If ``body`` is for this hop, return the advanced digest state (else ``None``, state kept)."""
    if body[0] or body[1]:
        return None
    candidate = running.copy()
    candidate.update(body[:8])
    candidate.update(_ZERO_DIGEST)
    candidate.update(body[16:])
    if candidate.digest()[:8] != body[DIGEST_SLICE]:
        return None
    return candidate


async def onion_encrypt(hops: list[HopCrypto], target: int, bodies: list[bytearray]) -> bytes:
    """Seal ``bodies`` for hop ``target`` and wrap them in the layers of hops target..0."""
    running = hops[target].forward_digest
    for body in bodies:
        seal(running, body)
    data = b"".join(bodies)
    for index in range(target, -1, -1):
        data = await hops[index].forward.apply(data)
    return data


async def onion_decrypt(hops: list[HopCrypto], data: bytes) -> list[tuple[int, bytes]] | None:
    """Peel backward bodies at the client: each comes back with the index of the hop that sent it.

    Returns ``None`` if any body is recognised by no hop (tampering or a desynchronised circuit).
    Layer i is applied only to the bodies not yet recognised, since only those passed through hop i.
    A layer under which no body has a zero ``recognized`` field (nearly always, at every hop but the
    last) passes the batch on whole, unsplit: only candidates pay for a digest check.
    """
    pending = list(range(len(data) // BODY_SIZE))
    result: list[tuple[int, bytes] | None] = [None] * len(pending)
    for index, hop in enumerate(hops):
        if not pending:
            break
        data = await hop.backward.apply(data)
        candidates = {i for i, (high, low) in enumerate(zip(data[0::BODY_SIZE], data[1::BODY_SIZE],
                                                            strict=True)) if not high | low}
        if not candidates:
            continue
        still, rest = [], []
        for i, (position, body) in enumerate(zip(pending, split_bodies(data), strict=True)):
            state = recognize(hop.backward_digest, body) if i in candidates else None
            if state is None:
                still.append(position)
                rest.append(body)
            else:
                hop.backward_digest = state
                result[position] = (index, body)
        pending, data = still, b"".join(rest)
    return None if pending else result  # type: ignore[return-value]


async def relay_forward(hop: HopCrypto, bodies: list[bytes]) -> list[tuple[bool, bytes]]:
    """Peel this relay's layer off forward bodies: each comes back as (for this hop?, body).

    Recognition runs in order, since each recognised body advances the running digest."""
    result = []
    for body in split_bodies(await hop.forward.apply(b"".join(bodies))):
        state = recognize(hop.forward_digest, body)
        if state is not None:
            hop.forward_digest = state
        result.append((state is not None, body))
    return result


async def relay_backward(hop: HopCrypto, bodies: list[bytes]) -> bytes:
    """Add this relay's layer to backward bodies on their way to the origin."""
    return await hop.backward.apply(b"".join(bodies))


async def edge_seal(hop: HopCrypto, bodies: list[bytearray]) -> bytes:
    """Seal bodies this hop originates (an exit's or destination's answers, EXTENDED) for the origin."""
    for body in bodies:
        seal(hop.backward_digest, body)
    return await hop.backward.apply(b"".join(bodies))
