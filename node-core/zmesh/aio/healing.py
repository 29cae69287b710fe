"""``CircuitKeeper``: ``MeshVPN``'s circuit rebuilt when it dies under its user (``zmesh.healing``).

The keeper watches the driver's events. When the circuit in use is destroyed by anyone but this
node, it emits ``disconnect`` (the circuit, the DESTROY's reason, the hop blamed), rebuilds on the
``Healer``'s jittered schedule without the hops that failed, and ``MeshVPN`` emits ``connect`` once
a circuit is built. Streams on the dead circuit end with ``StreamError`` (``EndReason.DESTROYED``),
as the node ends them; a stream asked for while a circuit is being rebuilt waits for it (``ready``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..errors import CircuitError, InvalidState, ZmeshError
from ..events import CircuitClosed, Event
from ..healing import CircuitLoss, Healer
from ..identity import PeerId
from .tasks import OwnedTasks

log = logging.getLogger(__name__)


class CircuitKeeper:
    """Rebuilds a lost circuit with ``rebuild()`` (a coroutine that builds, installs and announces
    one, raising ``ZmeshError`` when it cannot). ``current()`` is the circuit in use and ``path()``
    its hops; ``emit(event, value)`` reaches the owner's handlers."""

    def __init__(self, driver: Any, current: Callable[[], int | None], path: Callable[[], Sequence[PeerId]],
                 rebuild: Callable[[], Awaitable[None]], emit: Callable[[str, Any], Awaitable[None]], *,
                 clock: Callable[[], float], rng: Callable[[], float] = random.random) -> None:
        self.healer = Healer(clock, rng)
        self._clock, self._current, self._path, self._rebuild, self._emit = clock, current, path, rebuild, emit
        self._settled = asyncio.Event()  # set while no rebuild is under way
        self._settled.set()
        self._failure: ZmeshError | None = None  # why the last heal gave up, until a new circuit
        self._tasks = OwnedTasks("circuit keeper")
        previous = driver.on_event

        def on_event(event: Event) -> None:
            if previous is not None:
                previous(event)
            if isinstance(event, CircuitClosed) and event.origin and event.circuit == current():
                self._lost(event)
        driver.on_event = on_event

    @property
    def healing(self) -> bool:
        return not self._settled.is_set()

    def _lost(self, event: CircuitClosed) -> None:
        loss = self.healer.lost(event.circuit, event.reason, self._path(), event.failed_peer)
        log.info("the circuit in use was destroyed (%s); rebuilding it", event.reason.name)
        self._failure = None
        self._settled.clear()
        self._tasks.spawn(self._heal(loss))

    async def _heal(self, loss: CircuitLoss) -> None:
        try:
            await self._emit("disconnect", {"circuit": loss.circuit, "reason": loss.reason.name,
                                            "failed_hop": None if loss.failed_hop is None else loss.failed_hop.text,
                                            "rebuilding": True})
            while (deadline := self.healer.next_deadline()) is not None:
                await asyncio.sleep(max(0.0, deadline - self._clock()))
                if not self.healer.due(self._clock()):
                    continue
                try:
                    await self._rebuild()
                except InvalidState:  # the driver closed under us: nothing left to heal
                    self.healer.cancel()
                    return
                except ZmeshError as exc:  # the owner emitted it as an error already
                    self.healer.failed(exc.failed_peer if isinstance(exc, CircuitError) else None)
                    continue
                self.healer.rebuilt()
                return
            if self.healer.loss is None:  # cancelled by a disconnect from one of the handlers
                return
            self._failure = CircuitError(f"the circuit was destroyed ({loss.reason.name}) and could not be rebuilt "
                                         f"in {self.healer.max_rounds} rounds", loss.reason, loss.failed_hop)
            await self._emit("error", self._failure)
        finally:
            self._settled.set()

    def installing(self) -> None:
        """A new circuit is being installed by the owner (a connect): a loss before is forgotten."""
        self._failure = None

    async def ready(self) -> None:
        """Wait while a rebuild is under way; raise the reason if the last one gave up."""
        await self._settled.wait()
        if self._failure is not None:
            raise self._failure

    def hold(self) -> None:
        """The owner is replacing the circuit itself (``update_config``): calls wait until ``release``."""
        self._settled.clear()

    def release(self) -> None:
        self._settled.set()

    async def cancel(self) -> None:
        """The user disconnected: stop any rebuild; waiting calls see ``not connected``."""
        self.healer.cancel()
        self._failure = None
        tasks, self._tasks = self._tasks, OwnedTasks("circuit keeper")  # a later connect heals again
        await tasks.close()
        self._settled.set()
