"""What every asyncio link adapter needs beside the ``Link`` protocol (``zmesh.link``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class CloseOnce:
    """An async close that runs exactly once, however many callers ask (a link closed by its reader,
    its writer and its owner at once); each waits for that one run, and a waiter being cancelled
    does not cancel the close half-way."""

    def __init__(self, close: Callable[[], Awaitable[None]]) -> None:
        self._close, self._task = close, None

    async def __call__(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._task)
