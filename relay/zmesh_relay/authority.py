"""``zmesh authority``: one directory authority (docs/directory.md).

It accepts relay descriptors (``POST /v1/descriptor``) only after checking them and testing the relay
itself (``measure``), re-tests the relays it lists every vote interval, and on the fixed schedule
(``Period.at``: every authority derives the same periods from its clock) signs a vote, pushes it to
the other configured authorities, waits for theirs (all of them, or until a third of the interval
has passed), computes the consensus, signs it and pushes its signature to the others.
``GET /v1/consensus`` serves that consensus with every signature gathered on it so far,
``GET /v1/descriptors`` the descriptors it names. A peer's malformed or forged vote or signature is
refused (HTTP 400, logged) and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from zmesh.consensus import (
    MAX_CONSENSUS_SIZE,
    add_signature,
    compute_consensus,
    majority,
    parse_consensus_body,
    sign_consensus,
)
from zmesh.consensus_view import AuthorityRef
from zmesh.descriptor import MAX_DESCRIPTOR_SIZE, verify_descriptor
from zmesh.encoding import pack_canonical, unpack_canonical
from zmesh.errors import ConfigError, ProtocolError, ZmeshError
from zmesh.hybrid import HybridKey, fingerprint_text, parse_signature
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.votes import DIGEST_SIZE, MAX_VOTE_SIZE, Period, Vote, sign_vote, verify_vote

from .authority_state import AuthorityState
from .config import split_host_port
from .keys import load_or_create_authority_key
from .measure import measure_relay

log = logging.getLogger(__name__)

OCTETS = "application/octet-stream"
# The consensus and descriptors are public signed documents that tabs on any origin fetch and verify
# themselves (docs/directory.md §8): readable cross-origin, without credentials. Only these GETs.
PUBLIC = {"Access-Control-Allow-Origin": "*"}
TEST_CONCURRENCY = 8
PUSH_RETRY = 0.2  # seconds between pushes to an authority that did not take one yet


def vote_interval(config: dict[str, Any]) -> int:
    """``authority.vote_interval``, or its default: 5 min on a test network, 1 h otherwise."""
    seconds = config["authority.vote_interval"]
    if seconds:
        return int(seconds)
    return 300 if config["network.allow_private_addresses"] else 3600


class Authority:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.provider = NativeCryptoProvider()
        self.interval = vote_interval(config)
        self.key: HybridKey | None = None
        self.state: AuthorityState | None = None
        self.peers: list[AuthorityRef] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._testing = asyncio.Semaphore(TEST_CONCURRENCY)
        self._vote_arrived = asyncio.Event()

    @property
    def fingerprint(self) -> str:
        assert self.key is not None
        return self.key.public.fingerprint_text

    async def start(self) -> None:
        self.key = await load_or_create_authority_key(self.provider, self.config["authority.data_dir"])
        own = self.key.public.fingerprint
        self.peers = [a for a in self.config["directory.authorities"] if a.fingerprint != own]
        configured = frozenset({own, *(a.fingerprint for a in self.peers)})
        self.state = AuthorityState(own, configured, stable_after=self.interval)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        app = web.Application(client_max_size=MAX_VOTE_SIZE)
        app.router.add_post("/v1/descriptor", self._descriptor)
        app.router.add_post("/v1/vote", self._vote)
        app.router.add_post("/v1/consensus-signature", self._signature)
        app.router.add_get("/v1/consensus", self._consensus)
        app.router.add_get("/v1/descriptors", self._descriptors)
        app.router.add_get("/v1/vote", self._own_vote)
        app.router.add_get("/healthz", lambda _r: web.json_response({"status": "ok"}))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_host_port(self.config["authority.listen"])
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound}"
        self._spawn(self._schedule())
        self._spawn(self._retest_loop())
        log.info("authority %s serving on %s, %d peer authorities, vote every %d s",
                 self.fingerprint[:10], self.url, len(self.peers), self.interval)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ relays

    async def _test(self, raw: bytes) -> tuple[int, dict]:
        assert self.state is not None
        try:
            descriptor = await verify_descriptor(self.provider, raw, now=time.time())
        except ZmeshError as exc:
            return 400, {"error": "bad_descriptor", "detail": str(exc)}
        if descriptor.mldsa65 is None:
            return 400, {"error": "bad_descriptor", "detail": "an authority lists only descriptors signed with "
                         "Ed25519 and ML-DSA-65 (the hybrid form, docs/directory.md)"}
        known = self.state.relays.get(descriptor.peer_id)
        if known is not None and known.descriptor.published > descriptor.published:
            return 409, {"error": "stale_descriptor", "detail": "a newer descriptor of this relay is listed"}
        if not self.state.room_for(descriptor.peer_id):
            return 503, {"error": "full", "detail": "this authority lists as many relays as it can"}
        try:
            async with self._testing:
                measured = await measure_relay(self.provider, descriptor,
                                               allow_private=self.config["network.allow_private_addresses"])
        except ZmeshError as exc:
            log.info("not listing %s: %s", descriptor.peer_id.short(), exc)
            return 422, {"error": "unreachable", "detail": str(exc)}
        tested = self.state.passed(descriptor, measured, time.time())
        return 200, {"accepted": True, "bandwidth": tested.credited, "rtt_ms": round(measured.rtt * 1000, 3)}

    async def _descriptor(self, request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_DESCRIPTOR_SIZE + 1)
        status, answer = await self._test(raw)
        return web.json_response(answer, status=status)

    async def _retest_loop(self) -> None:
        """Test every listed relay again each interval; one that fails leaves the next vote."""
        assert self.state is not None
        while True:
            await asyncio.sleep(self.interval)
            for peer, tested in list(self.state.relays.items()):
                try:
                    async with self._testing:
                        measured = await measure_relay(self.provider, tested.descriptor,
                                                       allow_private=self.config["network.allow_private_addresses"])
                except ZmeshError as exc:
                    log.info("dropping %s: %s", peer.short(), exc)
                    self.state.failed(peer)
                    continue
                if self.state.relays.get(peer) is tested:
                    self.state.passed(tested.descriptor, measured, time.time())

    # ------------------------------------------------------------------ voting

    async def _schedule(self) -> None:
        voted = -1
        while True:
            period = Period.at(time.time(), self.interval)
            if period.valid_after != voted:
                voted = period.valid_after
                try:
                    await self._round(period)
                except ZmeshError as exc:
                    log.warning("no consensus for the period from %d: %s", period.valid_after, exc)
            await asyncio.sleep(max(0.01, period.fresh_until - time.time()))

    async def _round(self, period: Period) -> None:
        assert self.state is not None and self.key is not None
        state = self.state
        vote = await sign_vote(self.provider, self.key, period, state.entries(time.time()))
        state.add_vote(vote, period.valid_after, self.interval)
        deadline = period.valid_after + self.interval / 3
        for peer in self.peers:
            self._spawn(self._push(peer, "/v1/vote", vote.raw, deadline))
        while len(state.votes.get(period.valid_after, {})) < len(state.authorities) and time.time() < deadline:
            self._vote_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._vote_arrived.wait(), max(0.01, deadline - time.time()))
        votes = list(state.votes.get(period.valid_after, {}).values())
        if len(votes) < majority(len(state.authorities)):
            raise ProtocolError(f"only {len(votes)} of {len(state.authorities)} authorities voted")
        consensus = parse_consensus_body(compute_consensus(votes, sorted(state.authorities)))
        if state.consensus is not None and state.consensus.period.valid_after >= period.valid_after:
            return
        consensus = await sign_consensus(self.provider, self.key, consensus)
        state.adopt(await self._verified_pending(consensus))
        log.info("consensus from %d: %d relays from %d votes", period.valid_after, len(consensus.relays), len(votes))
        message = pack_canonical({"digest": consensus.digest, "signature": consensus.signatures[state.fingerprint]})
        for peer in self.peers:
            self._spawn(self._push(peer, "/v1/consensus-signature", message, period.fresh_until))

    async def _verified_pending(self, consensus: Any) -> Any:
        """Attach the signatures that came before this authority computed the body, where they verify."""
        assert self.state is not None
        early = self.state.pending.pop(consensus.digest, {})
        for entry in early.values():
            try:
                consensus = await add_signature(self.provider, consensus, entry, self.state.authorities)
            except ZmeshError as exc:
                log.warning("refusing an early consensus signature: %s", exc)
        return consensus

    async def _push(self, peer: AuthorityRef, path: str, body: bytes, until: float) -> None:
        """POST ``body`` to ``peer`` until it takes it (2xx), refuses it (4xx) or ``until`` passes."""
        assert self._session is not None
        while time.time() < until:
            try:
                async with self._session.post(peer.url + path, data=body, headers={"Content-Type": OCTETS}) as reply:
                    if reply.status < 500:
                        if reply.status >= 400:
                            log.warning("%s refused our %s: %s", peer.url, path, (await reply.text())[:200])
                        return
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("%s not reachable for %s: %s", peer.url, path, exc)
            await asyncio.sleep(PUSH_RETRY)

    async def _vote(self, request: web.Request) -> web.Response:
        assert self.state is not None
        raw = await request.content.read(MAX_VOTE_SIZE + 1)
        try:
            vote: Vote = await verify_vote(self.provider, raw, authorities=self.state.authorities)
        except ZmeshError as exc:
            log.warning("refused a vote from %s: %s", request.remote, exc)
            return web.json_response({"error": "bad_vote", "detail": str(exc)}, status=400)
        current = Period.at(time.time(), self.interval).valid_after
        if not self.state.add_vote(vote, current, self.interval):
            return web.json_response({"error": "unwanted_vote", "detail": "not for a current period, or a second "
                                      "different vote for one"}, status=409)
        self._vote_arrived.set()
        return web.json_response({"accepted": True})

    async def _signature(self, request: web.Request) -> web.Response:
        assert self.state is not None
        try:
            message = unpack_canonical(await request.content.read(16384), max_size=16384, what="consensus signature")
            if not isinstance(message, dict) or set(message) != {"digest", "signature"} \
                    or not isinstance(message["digest"], bytes) or not isinstance(message["signature"], dict):
                raise ProtocolError("a consensus signature message is {digest, signature}")
            digest, entry = message["digest"], parse_signature(message["signature"])
            if entry["fp"] not in self.state.authorities:
                raise ProtocolError("the signature is not from a configured authority")
            consensus = self.state.consensus
            if consensus is not None and consensus.digest == digest:
                self.state.consensus = await add_signature(self.provider, consensus, entry, self.state.authorities)
            elif len(digest) == DIGEST_SIZE:
                self.state.hold_signature(digest, entry)
        except ZmeshError as exc:
            log.warning("refused a consensus signature from %s: %s", request.remote, exc)
            return web.json_response({"error": "bad_signature", "detail": str(exc)}, status=400)
        return web.json_response({"accepted": True})

    async def _consensus(self, _request: web.Request) -> web.Response:
        assert self.state is not None
        if self.state.consensus is None:
            return web.json_response({"error": "no_consensus", "detail": "no consensus computed yet"}, status=404)
        raw = self.state.consensus.to_bytes()
        assert len(raw) <= MAX_CONSENSUS_SIZE
        return web.Response(body=raw, content_type=OCTETS, headers=PUBLIC)

    async def _descriptors(self, _request: web.Request) -> web.Response:
        assert self.state is not None
        return web.Response(body=pack_canonical(list(self.state.descriptors.values())), content_type=OCTETS,
                            headers=PUBLIC)

    async def _own_vote(self, _request: web.Request) -> web.Response:
        assert self.state is not None
        mine = [v for votes in self.state.votes.values() for fp, v in votes.items() if fp == self.state.fingerprint]
        if not mine:
            return web.json_response({"error": "no_vote", "detail": "no vote yet"}, status=404)
        return web.Response(body=max(mine, key=lambda v: v.period.valid_after).raw, content_type=OCTETS)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


async def print_fingerprint(config: dict[str, Any]) -> str:
    """``zmesh authority --fingerprint``: create the key if needed and return its fingerprint."""
    if not config["authority.data_dir"]:
        raise ConfigError("authority.data_dir (--data-dir) is needed")
    key = await load_or_create_authority_key(NativeCryptoProvider(), config["authority.data_dir"])
    return fingerprint_text(key.public.fingerprint)
