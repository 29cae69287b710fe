"""Shared fixtures: the native provider and helpers to run an in-memory mesh."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from zmesh.native.crypto import NativeCryptoProvider

from . import signal_backends
from .private_network import declare_private_test_network, require_private_network


def pytest_configure(config: pytest.Config) -> None:
    require_private_network()
    declare_private_test_network()


@pytest.fixture(scope="session")
def provider() -> NativeCryptoProvider:
    return NativeCryptoProvider()


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition the system reaches by itself (not a fixed sleep); fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One real ``redis-server`` for the session (no persistence); tests flush it first."""
    with signal_backends.redis_server() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def signal_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test against both signal-server backends (``tests.signal_backends.serving``)."""
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        signal_backends.flush(url)
    signal_backends.use(url)
    try:
        yield request.param
    finally:
        signal_backends.use(None)
