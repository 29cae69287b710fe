"""Both signal-server backends for the signaling suites: a real ``redis-server`` on a free
loopback port (no persistence, stopped after), and ``serving`` that runs a server on whichever
backend the test is parametrised with, so the in-memory and Redis backends cannot drift."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from tests.private_network import free_port
from zmesh_signal import app

_current: dict[str, str | None] = {"redis": None}


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A fresh ``redis-server`` on 127.0.0.1 (a free port unless given); yields its URL, always
    stops it."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run 'make setup' (it installs Debian's redis-server)"
    port = port or free_port()
    proc = subprocess.Popen([binary, "--save", "", "--appendonly", "no", "--port", str(port),
                             "--bind", "127.0.0.1", "--daemonize", "no", "--loglevel", "notice"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # it says so once it listens (or exits, ending the output)
            if "Ready to accept connections" in line:
                break
        else:
            raise AssertionError(f"redis-server did not start (exit code {proc.wait()})")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def flush(url: str) -> None:
    """Empty the database between tests (each one starts on an empty shared store)."""
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


def use(redis_url: str | None) -> None:
    _current["redis"] = redis_url


def on_backend(config: app.SignalConfig) -> app.SignalConfig:
    """``config`` on the backend of the running test."""
    return dataclasses.replace(config, redis=_current["redis"]) if _current["redis"] else config


@asynccontextmanager
async def serving(config: app.SignalConfig, host: str, port: int) -> AsyncIterator[int]:
    """``zmesh_signal.app.serving`` on the backend of the running test."""
    async with app.serving(on_backend(config), host, port) as bound:
        yield bound
