"""The directory's listing rules (issue 19, defect 2), pure and driven by explicit times: what a
probe, a sign-in and the limits let through, and the change log behind ``?since=``."""

from __future__ import annotations

import asyncio

import pytest

from zmesh.descriptor import Capabilities, Descriptor, sign_descriptor
from zmesh.errors import ConfigError
from zmesh.identity import Identity
from zmesh_signal.directory import Directory, Stored

NOW = 1_800_000_000


def make(provider, identity: Identity | None = None, *, now: int = NOW, ws: str | None = "ws://relay.example:1/v1/link",
         via: Descriptor | None = None, lifetime: int = 3600) -> Descriptor:
    addresses = {"ws": (ws,)} if ws else {}
    if via is not None:
        addresses["via"] = (via.peer_id.text,)

    async def sign() -> Descriptor:
        return await sign_descriptor(provider, identity or await Identity.generate(provider), now=now,
                                     addresses=addresses, capabilities=Capabilities(), lifetime=lifetime)

    return asyncio.run(sign())


def ids(descriptors: list[Descriptor]) -> set:
    return {d.peer_id for d in descriptors}


def listed_relay(directory: Directory, descriptor: Descriptor, source: str = "10.0.0.1") -> None:
    assert directory.put(descriptor, NOW, source=source) is Stored.PENDING
    assert directory.next_pending() is descriptor
    assert directory.probed(descriptor, True, NOW) is Stored.LISTED


def test_a_relay_is_listed_only_after_its_probe_passes_and_dropped_when_one_fails(provider):
    directory = Directory()
    relay = make(provider)
    assert directory.put(relay, NOW, source="10.0.0.1") is Stored.PENDING
    assert directory.live(NOW) == [] and directory.get(relay.peer_id, NOW) is None
    assert directory.next_pending() is relay and directory.next_pending() is None  # handed out once
    assert directory.probed(relay, True, NOW) is Stored.LISTED
    assert directory.live(NOW) == [relay]
    identity_of_fake = make(provider)
    directory.put(identity_of_fake, NOW, source="10.0.0.2")
    assert directory.probed(directory.next_pending(), False, NOW) is None
    assert directory.live(NOW) == [relay] and directory.pending_count() == 0


def test_a_republished_relay_skips_the_probe_within_the_interval_and_a_failed_reprobe_drops_it(provider):
    identity = asyncio.run(Identity.generate(provider))
    directory = Directory(reprobe_interval=600)
    first = make(provider, identity)
    listed_relay(directory, first)
    same = make(provider, identity, now=NOW + 1)
    assert directory.put(same, NOW + 1, source="10.0.0.1") is Stored.LISTED  # same address and keys
    moved = make(provider, identity, now=NOW + 2, ws="ws://elsewhere.example:1/v1/link")
    assert directory.put(moved, NOW + 2, source="10.0.0.1") is Stored.PENDING
    assert directory.live(NOW + 2) == [same]  # still listed while its new address is probed
    directory.probed(directory.next_pending(), False, NOW + 2)
    assert directory.live(NOW + 2) == []
    later = make(provider, identity, now=NOW + 700)
    assert directory.put(later, NOW + 700, source="10.0.0.1") is Stored.PENDING


def test_each_source_holds_at_most_max_per_source_peers(provider):
    directory = Directory(max_per_source=2)
    a, b, c = (make(provider) for _ in range(3))
    assert directory.put(a, NOW, source="10.0.0.1") is Stored.PENDING
    assert directory.put(b, NOW, source="10.0.0.1") is Stored.PENDING
    assert directory.put(c, NOW, source="10.0.0.1") is Stored.SOURCE_LIMIT
    assert directory.put(c, NOW, source="10.0.0.2") is Stored.PENDING
    assert directory.next_pending() is c  # the source with fewest entries waiting goes first
    assert directory.next_pending() is a
    directory.probed(a, False, NOW)  # a failed probe frees its source's slot
    assert directory.put(make(provider), NOW, source="10.0.0.1") is Stored.PENDING


def test_a_full_pending_set_drops_the_oldest_entry_of_the_heaviest_source(provider):
    directory = Directory(max_pending=4)
    flood = [make(provider) for _ in range(3)]
    for descriptor in flood:
        directory.put(descriptor, NOW, source="10.6.6.6")
    honest = make(provider)
    assert directory.put(honest, NOW, source="10.0.0.1") is Stored.PENDING
    assert directory.put(make(provider), NOW, source="10.6.6.7") is Stored.PENDING
    assert directory.pending_count() == 4
    taken = ids([directory.next_pending() for _ in range(4)])
    assert honest.peer_id in taken and flood[0].peer_id not in taken  # the flood's oldest went, not the honest one


def test_probers_take_a_new_source_before_sources_whose_probes_failed(provider):
    directory = Directory()
    for source in ("10.6.6.1", "10.6.6.2"):
        for _ in range(3):
            directory.put(make(provider), NOW, source=source)
    for _ in range(2):
        directory.probed(directory.next_pending(), False, NOW)
    honest = make(provider)
    directory.put(honest, NOW, source="10.0.0.1")
    assert directory.next_pending() is honest


def test_a_tab_is_listed_only_while_signed_in_and_its_via_relay_is_listed(provider):
    directory = Directory()
    home = make(provider)
    tab = make(provider, ws=None, via=home)
    assert directory.put(tab, NOW, source="10.0.0.9") is Stored.WAITING
    directory.set_present(tab.peer_id, True)
    assert directory.live(NOW) == []  # its home relay is not listed yet
    listed_relay(directory, home)
    assert ids(directory.live(NOW)) == ids([home, tab])
    directory.set_present(tab.peer_id, False)
    assert directory.live(NOW) == [home]
    directory.set_present(tab.peer_id, True)
    assert ids(directory.live(NOW)) == ids([home, tab])
    listed_relay(directory, make(provider), source="10.0.0.3")
    directory.set_present(home.peer_id, False)  # a relay needs no sign-in
    assert ids(directory.live(NOW)) >= ids([home, tab])


def test_a_proven_relay_pushes_out_tabs_but_tabs_never_push_out_listed_entries(provider):
    directory = Directory(capacity=2)
    waiting_tab, present_tab = make(provider, ws=None), make(provider, ws=None)
    directory.put(waiting_tab, NOW, source="10.0.0.8")
    directory.set_present(present_tab.peer_id, True)
    assert directory.put(present_tab, NOW, source="10.0.0.9") is Stored.LISTED
    relay = make(provider)
    listed_relay(directory, relay)  # the tab that is not signed in made room
    assert ids(directory.live(NOW)) == ids([present_tab, relay])
    assert directory.put(make(provider, ws=None), NOW, source="10.0.0.7") is Stored.FULL
    second = make(provider)
    listed_relay(directory, second, source="10.0.0.2")  # proven beats a listed tab
    assert ids(directory.live(NOW)) == ids([relay, second])
    third = make(provider)
    directory.put(third, NOW, source="10.0.0.3")
    assert directory.probed(directory.next_pending(), True, NOW) is Stored.FULL  # proven relays are kept
    assert ids(directory.live(NOW)) == ids([relay, second]) and directory.pending_count() == 0


def test_changes_since_a_cursor_name_what_was_added_replaced_and_removed(provider):
    directory = Directory(verify=False, max_tombstones=2)
    a, b = make(provider, lifetime=600), make(provider)
    directory.put(a, NOW)
    start = directory.changes(NOW, None)
    assert start.full and start.listed == [a]
    assert directory.changes(NOW, start.cursor).listed == []
    directory.put(b, NOW)
    step = directory.changes(NOW + 600, start.cursor)  # a expired meanwhile
    assert (step.full, step.listed, step.removed) == (False, [b], [a.peer_id])
    assert directory.changes(NOW + 600, step.cursor).listed == []
    for cursor in ("0000000000000000:0", start.cursor.split(":")[0] + ":99", "nonsense"):
        assert directory.changes(NOW + 600, cursor).full  # another server, the future, garbage
    for _ in range(3):  # more removals than tombstones kept: old cursors get the whole listing
        directory.put(make(provider, lifetime=60, now=NOW + 600), NOW + 600)
    assert directory.changes(NOW + 660, step.cursor).full
    assert directory.changes(NOW + 660, step.cursor).listed == [b]


def test_directory_refuses_nonsense_limits():
    for kwargs in ({"capacity": 0}, {"max_pending": 0}, {"max_per_source": 0}, {"reprobe_interval": -1}):
        with pytest.raises(ConfigError):
            Directory(**kwargs)
