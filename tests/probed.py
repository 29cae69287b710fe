"""Stand-in relays for tests that need a descriptor *listed* and then its address to misbehave.

The signal server lists a relay only once its probe — a link and a circuit handshake with the
descriptor's onion keys — has passed (docs/signaling.md, "Listing"). ``ProbeAnswerer`` passes that
probe for the identities it is given, as a real relay would; a test then stops it and puts a
tarpit or garbage on the same port: a relay that was reachable when listed and is not any more.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from aiohttp import WSMsgType, web

from zmesh.cells import BODY_SIZE, CellCommand, encode_cell, fragments, parse_frame
from zmesh.crypto.provider import KEY_SIZE, CryptoProvider
from zmesh.handshake import server_respond
from zmesh.identity import Identity, PeerId


async def answer_create(provider: CryptoProvider, identities: dict[PeerId, Identity], frame: bytes) -> bytes:
    """The CREATED frame a relay holding the addressed identity would send for a CREATE frame."""
    cells = parse_frame(frame)
    payload = b"".join(cell.payload for cell in cells)
    reply, _keys = await server_respond(provider, identities[PeerId(payload[:KEY_SIZE])], payload)
    return b"".join(encode_cell(CellCommand.CREATED, cells[0].circ_id, piece, flags)
                    for piece, flags in fragments(reply, BODY_SIZE))


class ProbeAnswerer:
    """A WebSocket ``/v1/link`` endpoint that answers probes for ``identities`` and nothing else."""

    def __init__(self, provider: CryptoProvider) -> None:
        self.provider = provider
        self.identities: dict[PeerId, Identity] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1") -> ProbeAnswerer:
        app = web.Application()
        app.router.add_get("/v1/link", self._link)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        message = await ws.receive()
        if message.type == WSMsgType.BINARY:
            await ws.send_bytes(await answer_create(self.provider, self.identities, message.data))
            await ws.receive()  # the probe's DESTROY, or its close
        await ws.close()
        return ws

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def is_listed(signal_url: str, peer: PeerId) -> bool:
    """Whether the signal server lists ``peer`` now."""
    try:
        urllib.request.urlopen(f"{signal_url}/v1/relays/{peer.text}", timeout=5).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise
    return True


def nothing_pending(signal_url: str) -> bool:
    """Whether every published relay has had its probe."""
    with urllib.request.urlopen(f"{signal_url}/healthz", timeout=5) as response:
        return json.loads(response.read())["pending"] == 0


def every(seconds: float, condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition`` asked at most once per ``seconds``, for ``wait_until`` (which polls every
    millisecond) over HTTP: the signal server would rate-limit that."""
    last = [float("-inf"), False]

    def check() -> bool:
        if time.monotonic() - last[0] >= seconds:
            last[:] = [time.monotonic(), condition()]
        return bool(last[1])

    return check
