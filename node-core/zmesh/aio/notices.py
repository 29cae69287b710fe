"""Refetching a ``DirectoryView`` when the signal server pushes "the listing changed".

A signaling session opened with ``on_directory`` (``zmesh.signaling.SignalSession.open``) calls it
for each notice (docs/signaling.md, WebSocket step 5). ``RefetchOnNotice`` is that callback for a
native node and a browser tab alike: it refetches what changed at once, so the view follows the
network instead of waiting for its max age, one refetch at a time, and a notice during one makes
it run once more (notices coalesce; the server already bounds their rate).

Every subscriber hears a notice at the same moment, so each waits a random delay of up to
``spread`` seconds first: a thousand tabs then spread their ``GET /v1/relays`` over two seconds
instead of sending them in one burst (notices that arrive meanwhile are covered by the same refetch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from ..errors import ZmeshError

log = logging.getLogger(__name__)


class RefetchOnNotice:
    """``refresh`` (e.g. ``DirectoryView.refresh``) run after each notice; call ``close`` when done."""

    def __init__(self, refresh: Callable[[], Awaitable[object]], *, spread: float = 2.0,
                 draw: Callable[[float, float], float] = random.uniform) -> None:
        self._refresh, self._spread, self._draw = refresh, spread, draw
        self._task: asyncio.Task | None = None
        self._stale = False  # a notice came that no refetch has covered yet
        self.refetches = 0

    def __call__(self) -> None:
        self._stale = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refetch())

    async def _refetch(self) -> None:
        while self._stale:
            await asyncio.sleep(self._draw(0.0, self._spread))
            self._stale = False
            try:
                await self._refresh()
            except (ZmeshError, OSError) as exc:  # a browser's fetch raises OSError when the origin is unreachable
                log.info("could not refetch the directory after a notice: %s", exc)
                return
            self.refetches += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
