"""Shared fixtures: the native provider and helpers to run an in-memory mesh."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from zmesh.native.crypto import NativeCryptoProvider

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
