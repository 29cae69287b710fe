"""Split messages on the mesh: ``MeshVPN.send_split`` and the share service that receives them.

The sender cuts the message into ``n`` shares (``zmesh.split``), builds ``n`` circuits to the
destination whose relays are pairwise disjoint (each circuit's drawn hops are excluded from the
next; relays in a family or country already used are avoided while the directory leaves another
choice), and sends share ``i`` on circuit ``i``: a stream to the destination's share service
(empty host, port ``SHARE_PORT``), one frame (4-byte big-endian length, the encoded share), and
the receiver answers one byte, 0 when it stored the share, else its ``Refusal`` code. With fewer
than ``k`` stored, ``SplitDeliveryError`` names how many were and why each other failed. The split
circuits are closed after. A destination reached only ``via`` its home relay (a browser tab that
answers no WebRTC offers) has that relay, and itself, on every path: disjointness holds for the
hops before it, so such a destination needs ``hops >= 3``.

Each circuit enters at its own first hop, so split circuits do not use entry guards: ``n`` entry
relays see this node, where a guarded circuit shows it to one.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..cells import EndReason
from ..descriptor import Descriptor
from ..errors import CircuitError, ConfigError, ProtocolError, SplitDeliveryError, ZmeshError
from ..identity import PeerId
from ..path import listens
from ..split import (
    DEFAULT_TTL,
    MAX_MESSAGE_SIZE,
    MAX_SHARE_SIZE,
    Refusal,
    Share,
    ShareRefused,
    SplitInbox,
    check_parameters,
    decode_share,
    split,
)
from .building import build_around_failures
from .driver import IncomingStream, MeshStream, NodeDriver

if TYPE_CHECKING:
    from .api import MeshVPN

SHARE_PORT = 2  # beside MESSAGE_PORT (1): the share service of a destination
STORED = 0
# The destination has the share, or already rebuilt the message from others (a share overtaken
# by the kth one arrives after delivery): either way it got there.
ARRIVED = (STORED, Refusal.DELIVERED)
ACK_TIMEOUT = 30.0
_LENGTH = struct.Struct(">I")


async def send_split(vpn: MeshVPN, destination: PeerId | str, data: bytes, *, k: int = 2, n: int = 3,
                     ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.time,
                     ack_timeout: float = ACK_TIMEOUT) -> int:
    """Send ``data`` to ``destination`` as ``n`` shares on disjoint circuits, any ``k`` of which
    rebuild it within ``ttl`` s. Returns how many shares reached the destination (``k``..``n``);
    raises ``SplitDeliveryError`` when fewer than ``k`` were."""
    check_parameters(k, n, ttl)
    if len(data) > MAX_MESSAGE_SIZE:
        raise ConfigError(f"a split message is at most {MAX_MESSAGE_SIZE} bytes")
    shares = split(bytes(data), k=k, n=n, ttl=ttl, now=clock())
    circuits, failures = await _build_disjoint(vpn, destination, n)
    try:
        if len(circuits) < k:
            raise SplitDeliveryError(0, k, n, [*failures, f"no share sent: {len(circuits)} disjoint circuit(s) built, "
                                                          f"{k} needed"])
        answers = await asyncio.gather(*(send_share(vpn.driver, circuit, share, ack_timeout)
                                         for circuit, share in zip(circuits, shares, strict=False)))
        stored = sum(answer in ARRIVED for answer in answers)
        failures += [f"share {index}: {_why(answer)}" for index, answer in enumerate(answers, 1)
                     if answer not in ARRIVED]
        if stored < k:
            raise SplitDeliveryError(stored, k, n, failures)
        return stored
    finally:
        for circuit in circuits:
            await vpn.driver.destroy_circuit(circuit)


async def send_share(driver: NodeDriver, circuit: int, share: Share, timeout: float = ACK_TIMEOUT) -> int | str:
    """Send one share on ``circuit``: the destination's answer (``STORED`` or a ``Refusal`` code),
    or why none came."""
    stream: MeshStream | None = None
    try:
        stream = await driver.open_stream(circuit, "", SHARE_PORT)
        encoded = share.encode()
        await stream.write(_LENGTH.pack(len(encoded)) + encoded)
        answer = await asyncio.wait_for(stream.read_exactly(1), timeout)
    except TimeoutError:
        return f"no acknowledgement within {timeout:g} s"
    except ZmeshError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if stream is not None:
            await stream.close()
    return answer[0] if answer else "the stream ended without an acknowledgement"


def _why(answer: int | str) -> str:
    if isinstance(answer, str):
        return answer
    try:
        return f"refused by the destination ({Refusal(answer).name.lower()})"
    except ValueError:
        return f"refused by the destination (code {answer})"


async def _build_disjoint(vpn: MeshVPN, destination: PeerId | str, n: int) -> tuple[list[int], list[str]]:
    """Up to ``n`` circuits to ``destination`` that share no drawn relay, and why the others failed."""
    relays, target, _ = vpn._listing(destination)
    assert target is not None
    home = None if listens(target) else next(
        (r for r in relays if r.peer_id.text in target.addresses.get("via", ())), None)
    if home is not None and vpn.options.hops < 3:
        raise ConfigError("split paths to a destination reached through its relay need hops >= 3 "
                          "(every path ends at that relay and the destination)")
    pinned = {target.peer_id} | ({home.peer_id} if home is not None else set())
    used: list[Descriptor] = []
    dead: set[PeerId] = set()
    circuits: list[int] = []
    failures: list[str] = []

    async def choose(avoid: frozenset[PeerId], refetch: bool) -> list[Descriptor]:
        nonlocal relays
        if refetch and vpn.refresh is not None:
            await vpn.refresh()
            relays = list(vpn.directory())
        dead.update(avoid)
        taken = {r.peer_id for r in used} | dead | {vpn.peer_id}
        path = {"hops": vpn.options.hops, "destination": target, "exclude_countries": vpn.options.exclude_countries}
        related = {r.peer_id for r in relays if any(r.same_family(u) for u in used)}
        countries = {u.capabilities.country for u in used if u.capabilities.country}
        try:  # far apart first: no family or country another share's path has
            return vpn.selector.select(relays, **{**path, "exclude": taken | related,
                                                  "exclude_countries": (*vpn.options.exclude_countries, *countries)})
        except CircuitError:
            return vpn.selector.select(relays, **path, exclude=taken)

    for index in range(1, n + 1):
        try:
            circuit, path = await build_around_failures(vpn.driver, choose, vpn.selector, policy=vpn.build_policy,
                                                        pinned=pinned)
        except CircuitError as exc:
            failures.append(f"path {index}: no disjoint circuit ({exc})")
            continue
        circuits.append(circuit)
        used.extend(hop for hop in path if hop.peer_id not in pinned)
    return circuits, failures


class ShareService:
    """Takes shares on ``SHARE_PORT`` streams into a ``SplitInbox`` and hands each message that
    combines to ``deliver``. At most ``max_streams`` share streams are read at once (each holds up
    to a share's bytes); more are refused."""

    def __init__(self, deliver: Callable[[bytes], Awaitable[None]], *, inbox: SplitInbox | None = None,
                 max_streams: int = 16) -> None:
        if not isinstance(max_streams, int) or max_streams < 1:
            raise ConfigError(f"max_streams must be a positive integer, got {max_streams!r}")
        self.inbox = inbox or SplitInbox(time.time)
        self.max_streams = max_streams
        self._deliver = deliver
        self._active = 0

    @property
    def active(self) -> int:
        """Share streams being read now."""
        return self._active

    async def serve(self, request: IncomingStream) -> None:
        """Accept a share stream (or refuse it while ``max_streams`` are read), store its share and
        answer with the outcome; deliver the message if this share completed it."""
        if self._active >= self.max_streams:
            await request.reject(EndReason.MISC)
            return
        self._active += 1
        stream: MeshStream | None = None
        try:
            stream = await request.accept()
            header = await stream.read_exactly(_LENGTH.size)
            (size,) = _LENGTH.unpack(header) if len(header) == _LENGTH.size else (-1,)
            if not 0 < size <= MAX_SHARE_SIZE:
                raise ProtocolError("share frame is truncated or larger than MAX_SHARE_SIZE")
            raw = await stream.read_exactly(size)
            if len(raw) != size:
                raise ProtocolError("share stream ended inside the share")
            message, code = None, STORED
            try:
                message = self.inbox.add(decode_share(raw))
            except ShareRefused as exc:
                code = exc.refusal
            except ProtocolError:
                code = Refusal.MALFORMED
            await stream.write(bytes([code]))
            await stream.close()
            if message is not None:
                await self._deliver(message)
        except ZmeshError:
            if stream is not None:
                await stream.close(EndReason.PROTOCOL)
        finally:
            self._active -= 1
