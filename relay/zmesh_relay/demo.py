"""``zmesh demo``: a whole mesh on loopback in one process, plus a local test site to fetch.

Signal server, three directory authorities (docs/directory.md; they vote every
``DEMO_VOTE_INTERVAL`` seconds), N relays publishing to all three (the last one an exit allowed to
reach only the demo's own test site), and a SOCKS5 client taking relays only from their consensus,
each on a free loopback port, as a declared private network (``network.allow_private_addresses``:
loopback relays are listed and dialed). Relay N listens on
127.N.0.1, a loopback /16 of its own, so paths obey the rule "no two hops in one /16" as they do
on the Internet instead of switching it off (Linux routes all of 127/8 to loopback); relay keys live in a
temporary folder removed on exit. It prints where everything is and a curl line that fetches the
test page through 3 hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from zmesh.consensus_view import AuthorityRef
from zmesh.errors import ConfigError
from zmesh_signal.app import run_server

from .authority import Authority, print_fingerprint
from .client import Client
from .relay import Relay

MAX_RELAYS = 254  # relay N listens on 127.N.0.1
AUTHORITIES = 3
DEMO_VOTE_INTERVAL = 5
CONSENSUS_WAIT = 60.0  # seconds for the first consensus with every relay, a guard among them

TEST_PAGE = b"""<!doctype html><title>zmesh demo site</title>
<h1>Hello through the mesh</h1><p>This page came from the demo's local test site via 3 relays.</p>
"""


class Demo:
    def __init__(self, config: dict[str, Any], *, relays: int, web_root: Path) -> None:
        if not 3 <= relays <= MAX_RELAYS:
            raise ConfigError(f"demo needs 3..{MAX_RELAYS} relays (--relays): each gets a loopback /16")
        self.config = {**config, "network.allow_private_addresses": True}  # the whole mesh is on loopback
        self.count = relays
        self.web_root = web_root
        self.relays: list[Relay] = []
        self.authorities: list[Authority] = []
        self.client: Client | None = None
        self._tmp = tempfile.mkdtemp(prefix="zmesh-demo-")
        self._signal: asyncio.Task | None = None
        self._site: web.AppRunner | None = None

    async def _start_site(self) -> int:
        app = web.Application()
        app.router.add_get("/", lambda _: web.Response(body=TEST_PAGE, content_type="text/html"))
        app.router.add_get("/big", lambda _: web.Response(body=bytes(1 << 20)))
        self._site = web.AppRunner(app, access_log=None)
        await self._site.setup()
        site = web.TCPSite(self._site, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def start(self) -> None:
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._signal = asyncio.ensure_future(run_server(
            "127.0.0.1", 0, web_root=self.web_root, ready=bound.set_result, allow_private_addresses=True,
            max_per_source=self.count + 16))  # every relay and tab of the demo publishes from 127.0.0.1
        signal_url = f"http://127.0.0.1:{await bound}"
        site_port = await self._start_site()
        await self._start_authorities()
        for index in range(self.count):
            exit_ = index == self.count - 1
            cfg = {**self.config, "signaling.url": signal_url, "relay.listen": f"127.{index + 1}.0.1:0",
                   "relay.data_dir": f"{self._tmp}/relay{index}", "relay.exit": exit_,
                   "security.exit_allow": [f"127.0.0.1/32:{site_port}"] if exit_ else []}
            relay = Relay(cfg)
            await relay.start()
            self.relays.append(relay)
        await self._await_consensus()
        self.client = Client({**self.config, "signaling.url": signal_url, "client.socks": "127.0.0.1:0"})
        await self.client.start()
        socks = f"127.0.0.1:{self.client.socks_port}"
        print(f"""
zmesh demo is running ({self.count} relays, 1 exit, {AUTHORITIES} directory authorities).
  signal server / page : {signal_url}/
  authorities          : {" ".join(a.url + "/v1/consensus" for a in self.authorities)}
  SOCKS5 proxy         : {socks}
  test site            : http://127.0.0.1:{site_port}/  (the exit may reach only this)

Fetch the test page through 3 relays:
  curl --socks5-hostname {socks} http://127.0.0.1:{site_port}/

Press Ctrl-C to stop everything.
zmesh-ready demo {socks} {signal_url} http://127.0.0.1:{site_port}/""", flush=True)

    async def _start_authorities(self) -> None:
        """Three authorities, each configured with all three (keys made first, ports picked free)."""
        ports = [_free_port() for _ in range(AUTHORITIES)]
        dirs = [f"{self._tmp}/authority{i}" for i in range(AUTHORITIES)]
        fingerprints = [await print_fingerprint({"authority.data_dir": d}) for d in dirs]
        refs = tuple(AuthorityRef.parse(f"http://127.0.0.1:{p}#{f}") for p, f in zip(ports, fingerprints, strict=True))
        self.config = {**self.config, "directory.authorities": refs}
        for port, data_dir in zip(ports, dirs, strict=True):
            authority = Authority({**self.config, "authority.listen": f"127.0.0.1:{port}",
                                   "authority.data_dir": data_dir, "authority.vote_interval": DEMO_VOTE_INTERVAL})
            await authority.start()
            self.authorities.append(authority)

    async def _await_consensus(self) -> None:
        """Until the first authority serves a consensus listing every relay, a guard among them."""
        deadline = asyncio.get_running_loop().time() + CONSENSUS_WAIT
        while asyncio.get_running_loop().time() < deadline:
            state = self.authorities[0].state
            consensus = state.consensus if state is not None else None
            if consensus is not None and len(consensus.relays) == self.count and len(consensus.signatures) >= 2 \
                    and any("Guard" in e.flags for e in consensus.relays):
                return
            await asyncio.sleep(0.2)
        raise ConfigError(f"the demo's authorities produced no consensus of the {self.count} relays in "
                          f"{CONSENSUS_WAIT:.0f} s")

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.stop()
        for relay in self.relays:
            await relay.stop()
        for authority in self.authorities:
            await authority.stop()
        if self._signal is not None:
            self._signal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._signal
        if self._site is not None:
            await self._site.cleanup()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _free_port() -> int:
    """A loopback port free now: each authority must know the others' URLs before any starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
