"""A directory authority's test of a relay (docs/directory.md §5): it opens a link to the relay's
published WebSocket address, completes a circuit handshake with its published onion keys, then
measures the link round trip (one PING → PONG) and a small bandwidth sample: ``SAMPLE_CELLS``
full-size PING cells, which the relay echoes as PONGs, timed from the first sent to the last
echoed. The relay cannot tell a test from a client's keepalive before it answers, and its claimed
bandwidth is only ever credited up to what was measured here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from zmesh.cells import BODY_SIZE, CELL_SIZE, CellCommand, encode_cell, parse_frame
from zmesh.crypto.provider import CryptoProvider
from zmesh.descriptor import Descriptor
from zmesh.link import Link
from zmesh_signal.probe import circuit_handshake, try_addresses

SAMPLE_CELLS = 64
_PER_FRAME = 16


@dataclass(frozen=True, slots=True)
class Measurement:
    address: str
    rtt: float  # seconds
    bandwidth: int  # bytes/s echoed during the sample


async def _pongs(link: Link, wanted: set[bytes]) -> None:
    """Read until every payload in ``wanted`` came back as a PONG."""
    while wanted:
        for cell in parse_frame(await link.recv()):
            if cell.command == CellCommand.PONG:
                wanted.discard(bytes(cell.payload))


async def _measure_link(provider: CryptoProvider, descriptor: Descriptor, link: Link) -> tuple[float, int]:
    await circuit_handshake(provider, descriptor, link)
    nonce = os.urandom(8)
    started = time.perf_counter()
    await link.send(encode_cell(CellCommand.PING, 0, nonce))
    await _pongs(link, {nonce})
    rtt = time.perf_counter() - started
    payloads = [os.urandom(BODY_SIZE) for _ in range(SAMPLE_CELLS)]
    started = time.perf_counter()
    for i in range(0, SAMPLE_CELLS, _PER_FRAME):
        await link.send(b"".join(encode_cell(CellCommand.PING, 0, p) for p in payloads[i:i + _PER_FRAME]))
    await _pongs(link, set(payloads))
    elapsed = max(time.perf_counter() - started, 1e-6)
    return rtt, int(SAMPLE_CELLS * CELL_SIZE / elapsed)


async def measure_relay(provider: CryptoProvider, descriptor: Descriptor, *, timeout: float = 10.0,
                        allow_private: bool = False) -> Measurement:
    """Test ``descriptor``'s relay at its ``ws`` addresses within ``timeout`` seconds overall.
    ``TransportError`` (with every address's reason) if none passes."""
    async def measure(link: Link) -> tuple[float, int]:
        return await _measure_link(provider, descriptor, link)

    url, (rtt, bandwidth) = await try_addresses(descriptor, measure, timeout=timeout, allow_private=allow_private,
                                                 failed="failed its test")
    return Measurement(url, rtt, bandwidth)
