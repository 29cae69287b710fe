"""A small aiohttp app on a socket of its own (the client's control port, the private ``/metrics``):
one place that binds it, reports the bound port, and turns a failed bind into a ``ConfigError``
naming the setting, rather than a traceback."""

from __future__ import annotations

from aiohttp import web

from zmesh.errors import ConfigError

from .config import join_host_port


async def serve(app: web.Application, host: str, port: int, setting: str) -> tuple[web.AppRunner, int]:
    """Listen on ``host:port`` (port 0: a free one); the runner (to clean up) and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{setting}: cannot listen on {join_host_port(host, port)}: {exc.strerror or exc}") from exc
    return runner, runner.addresses[0][1]
