"""The one verified directory view (``zmesh.directory_view``) that native nodes and the tab share,
driven in memory by a fake fetch function and a fake wall clock."""

from __future__ import annotations

import asyncio

import pytest

from zmesh.descriptor import Capabilities, Descriptor, sign_descriptor
from zmesh.directory_view import DirectoryView, RelayUpdate
from zmesh.errors import ConfigError, ProtocolError
from zmesh.identity import Identity
from zmesh.testing.wire import FakeClock

NOW = 1_800_000_000


class FakeDirectory:
    """Answers each fetch with the next scripted update and records the cursor it was asked with."""

    def __init__(self, *updates: RelayUpdate) -> None:
        self.updates = list(updates)
        self.asked: list[str | None] = []

    async def __call__(self, cursor: str | None) -> RelayUpdate:
        self.asked.append(cursor)
        return self.updates.pop(0)


async def relay(provider, *, now: int = NOW, lifetime: int = 3600) -> Descriptor:
    return await sign_descriptor(provider, await Identity.generate(provider), now=now, lifetime=lifetime,
                                 addresses={"ws": ("ws://127.0.0.1:1/v1/link",)}, capabilities=Capabilities(relay=True))


def peers(descriptors: list[Descriptor]) -> set:
    return {d.peer_id for d in descriptors}


def test_full_then_incremental_then_removed(provider) -> None:
    async def main() -> None:
        a, b, c = [await relay(provider) for _ in range(3)]
        fetch = FakeDirectory(RelayUpdate([a.raw, b.raw], [], "c1", True),
                              RelayUpdate([c.raw], [a.peer_id], "c2", False),
                              RelayUpdate([a.raw], [], "c3", True))
        view = DirectoryView(fetch, provider, wall_clock=lambda: NOW + 10)
        assert peers(await view.refresh()) == {a.peer_id, b.peer_id}
        assert peers(await view.refresh()) == {b.peer_id, c.peer_id}  # c added, a removed, b kept
        assert peers(await view.refresh()) == {a.peer_id}  # a full answer forgets the rest
        assert fetch.asked == [None, "c1", "c2"]

    asyncio.run(main())


def test_concurrent_refreshes_never_take_the_cursor_back_or_lose_a_change(provider) -> None:
    """A pushed notice and a circuit build can refresh at once. Whichever answer comes back last, the
    view ends at the newest cursor with every change: an older answer finishing after a newer one
    was applied is dropped, and answers apply on top of each other."""
    async def main(older_finishes_last: bool) -> None:
        a, b, c = [await relay(provider) for _ in range(3)]
        view = DirectoryView(FakeDirectory(RelayUpdate([a.raw], [], "c1", True)), provider, wall_clock=lambda: NOW + 10)
        await view.refresh()
        gates = [asyncio.Event(), asyncio.Event()]
        scripted = [RelayUpdate([b.raw], [], "c2", False), RelayUpdate([b.raw, c.raw], [a.peer_id], "c3", False)]
        asked = []

        async def slow_fetch(cursor):
            index = len(asked)
            asked.append(cursor)
            await gates[index].wait()
            return scripted[index]

        view.fetch = slow_fetch
        older = asyncio.create_task(view.refresh())
        await asyncio.sleep(0)  # lets it ask with cursor c1 (no time passes: a turn of the loop)
        newer = asyncio.create_task(view.refresh())
        await asyncio.sleep(0)
        for index in ((1, 0) if older_finishes_last else (0, 1)):
            gates[index].set()
            await (newer if index == 1 else older)
        assert asked == ["c1", "c1"]
        assert peers(view.live()) == {b.peer_id, c.peer_id}
        view.fetch = FakeDirectory(RelayUpdate([], [], "c4", False))
        await view.refresh()
        assert view.fetch.asked == ["c3"]

    asyncio.run(main(older_finishes_last=True))
    asyncio.run(main(older_finishes_last=False))


def test_bad_descriptors_are_ignored_and_counted(provider) -> None:
    async def main() -> None:
        good, stale = await relay(provider), await relay(provider, now=NOW - 7200)
        forged = bytearray(good.raw)
        forged[-1] ^= 1
        fetch = FakeDirectory(RelayUpdate([bytes(forged), b"\x00garbage", stale.raw, good.raw], [], "c1", True))
        view = DirectoryView(fetch, provider, wall_clock=lambda: NOW)
        assert peers(await view.refresh()) == {good.peer_id}
        assert view.rejected == 3

    asyncio.run(main())


def test_descriptors_expire_and_fetches_follow_max_age(provider) -> None:
    async def main() -> None:
        short, long = await relay(provider, lifetime=600), await relay(provider, lifetime=3600)
        wall = FakeClock()
        wall.now = NOW + 1
        clock = FakeClock()
        fetch = FakeDirectory(RelayUpdate([short.raw, long.raw], [], "c", True), RelayUpdate([], [], "c", False))
        view = DirectoryView(fetch, provider, max_age=30, wall_clock=wall, clock=clock)
        assert peers(await view.relays()) == {short.peer_id, long.peer_id}
        wall.now = NOW + 601  # the short one expired; no refetch needed to drop it
        assert peers(view.live()) == {long.peer_id}
        assert await view.find(short.peer_id) is None  # known but expired: no refetch, no answer
        await view.relays()
        assert len(fetch.asked) == 1  # within max_age: served from memory
        clock.now += 31
        await view.relays()
        assert len(fetch.asked) == 2

    asyncio.run(main())


def test_find_refetches_once_for_an_unknown_peer(provider) -> None:
    async def main() -> None:
        a, b = await relay(provider), await relay(provider)
        fetch = FakeDirectory(RelayUpdate([a.raw], [], "c1", True), RelayUpdate([b.raw], [], "c2", False))
        view = DirectoryView(fetch, provider, wall_clock=lambda: NOW)
        await view.refresh()
        assert await view.find(a.peer_id) == a and len(fetch.asked) == 1
        assert await view.find(b.peer_id) == b and fetch.asked == [None, "c1"]

    asyncio.run(main())


@pytest.mark.parametrize("answer", [
    [], {"relays": "x"}, {"relays": [1]}, {"relays": [], "removed": ["not a peer id"]},
    {"relays": [], "cursor": 5}, {"relays": ["%%%"]},
])
def test_a_malformed_answer_is_a_protocol_error(answer) -> None:
    with pytest.raises(ProtocolError):
        RelayUpdate.from_answer(answer)


def test_max_age_is_checked(provider) -> None:
    with pytest.raises(ConfigError):
        DirectoryView(FakeDirectory(), provider, max_age=-1)
