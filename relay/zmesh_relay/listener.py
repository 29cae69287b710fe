"""A small aiohttp app on a socket of its own (the client's control port, the private ``/metrics``):
one place that binds it, reports the bound port, and turns a failed bind into a ``ConfigError``
naming the setting, rather than a traceback."""

from __future__ import annotations

from aiohttp import web

from zmesh.errors import ConfigError

from .config import join_host_port


class Listener:
    """Owns one such app's socket from ``start`` to ``close``."""

    def __init__(self, setting: str) -> None:
        self.setting = setting  # named in the error when the socket cannot be bound
        self._runner: web.AppRunner | None = None

    async def start(self, app: web.Application, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: a free one); return the bound port."""
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"{self.setting}: cannot listen on {join_host_port(host, port)}: "
                              f"{exc.strerror or exc}") from exc
        self._runner = runner
        return runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
