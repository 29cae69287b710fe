"""The one owned-task helper (``zmesh.aio.tasks.OwnedTasks``) and the components built on it: a
closed owner leaves no task running, a background failure is logged and counted, never lost."""

from __future__ import annotations

import asyncio
import logging

from zmesh.aio.tasks import OwnedTasks
from zmesh.path import PathSelector
from zmesh.testing.memnet import MemoryNetwork, echo_service


def test_close_cancels_and_awaits_every_task() -> None:
    async def main() -> None:
        owner = OwnedTasks("test")
        stopped: list[int] = []

        async def forever(n: int) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(n)

        for n in range(50):
            owner.spawn(forever(n))
        await asyncio.sleep(0)
        assert len(owner) == 50
        await owner.close()
        assert sorted(stopped) == list(range(50)) and len(owner) == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_a_failed_background_task_is_counted_and_logged_without_its_message(caplog) -> None:
    async def main() -> OwnedTasks:
        owner = OwnedTasks("test")

        async def fails() -> None:
            raise OSError("connect to 10.1.2.3 failed")

        owner.spawn(fails())
        for _ in range(3):
            await asyncio.sleep(0)
        await owner.close()
        return owner

    with caplog.at_level(logging.WARNING, logger="zmesh.aio.tasks"):
        owner = asyncio.run(main())
    assert owner.failed == 1
    assert "OSError" in caplog.text and "10.1.2.3" not in caplog.text


def test_nothing_starts_after_close_and_close_from_an_own_task_returns() -> None:
    async def main() -> None:
        owner = OwnedTasks("test")
        ran: list[str] = []

        async def late() -> None:
            ran.append("late")

        async def closes_its_owner() -> None:
            await owner.close()
            owner.spawn(late())  # refused: closed, and the coroutine is closed unrun
            ran.append("closer")

        owner.spawn(closes_its_owner())
        await asyncio.wait_for(asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()}), 5)
        assert ran == ["closer"] and len(owner) == 0

    asyncio.run(main())


def test_closed_drivers_leave_no_task_running(provider) -> None:
    """Drivers with built circuits and open links close to zero tasks."""
    async def main() -> None:
        net = MemoryNetwork(provider)
        client = await net.add_node()
        for _ in range(3):
            await net.add_node(exit=True, stream_handler=echo_service)
        path = PathSelector().select(list(net.descriptors.values()), hops=3,
                                     exclude={client.node.identity.peer_id})
        await client.build_circuit(path)
        assert len(asyncio.all_tasks()) > 10
        await net.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
