"""The client's local control port: what the client does, as JSON for operators, tests and dashboards.

Read-only and unauthenticated, so it listens on loopback unless the operator allows otherwise
(``config.control_address``). ``GET /v1/circuits`` is the one resource (schema in
``docs/control.md``); any other path is a JSON 404, any other method a JSON 405.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from .listener import Listener

Status = Callable[[], dict[str, Any]]


class ControlServer:
    def __init__(self, status: Status) -> None:
        self._status = status
        self._listener = Listener("client.control")

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port``; return the bound port."""
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        return await self._listener.start(app, host, port)

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path != "/v1/circuits":
            return web.json_response({"error": "not found", "paths": ["/v1/circuits"]}, status=404)
        if request.method != "GET":
            return web.json_response({"error": "only GET"}, status=405, headers={"Allow": "GET"})
        return web.json_response(self._status())

    async def close(self) -> None:
        await self._listener.close()
