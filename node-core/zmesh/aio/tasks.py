"""The tasks one component starts in the background and must stop when it closes.

A task nobody holds a reference to can be garbage-collected mid-run, and one nobody awaits hides
its exception until the interpreter prints "Task exception was never retrieved". ``OwnedTasks``
holds each task until it ends, logs (and then forgets) a background task's failure, and on
``close`` cancels every task and awaits them all, so a closed component leaves nothing running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class OwnedTasks:
    """The background tasks of one owner (``name`` says whose in the log)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failed = 0  # background tasks that ended with an exception
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` as a task owned until it ends. Once closed, nothing new starts: the
        coroutine is closed unrun (a task finishing during ``close`` may still try to start one)."""
        if self._closed:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def __len__(self) -> int:
        return len(self._tasks)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failed += 1
            # The type only at WARNING: a message may carry a peer's address.
            log.warning("%s: a background task failed: %s", self.name, type(exc).__name__)
            log.debug("%s: background task failure", self.name, exc_info=exc)

    async def close(self) -> None:
        """Cancel every task and wait until all have ended; later ``spawn`` calls start nothing.
        Called from one of its own tasks, it leaves that one running (it cannot await itself)."""
        self._closed = True
        while tasks := [task for task in self._tasks if task is not asyncio.current_task()]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
