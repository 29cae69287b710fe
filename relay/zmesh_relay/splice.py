"""Copy bytes both ways between a mesh stream and a TCP connection, with backpressure.

Used by the exit (mesh ↔ target) and the SOCKS front (application ↔ mesh). zmesh streams have no
half-close (END closes both ways, as in Tor), so EOF needs a rule per side:
- at the exit, the target's EOF means its answer is complete: END the stream once it is all sent;
- at the SOCKS front, the application's EOF only means "done sending" (``shutdown(SHUT_WR)``):
  keep delivering the answer until the exit ends the stream, or until nothing has come for
  ``half_close_timeout`` seconds (an application that closed outright would otherwise hold the
  stream for as long as a silent target keeps its connection open); giving up is an abnormal end.
Nothing already received is dropped in either case.

How a connection ends is passed on: a normal end (END DONE, EOF) becomes END DONE or a FIN; an
abnormal one (circuit destroyed, END with an error reason, a TCP reset or write error, the idle
timeout, cancellation) becomes END MISC or a TCP reset, so an application never takes a truncated
answer for a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from zmesh.cells import EndReason
from zmesh.errors import StreamError

CHUNK = 64 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


class StreamLike(Protocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self, reason: EndReason = EndReason.DONE) -> None: ...


def reset(writer: asyncio.StreamWriter) -> None:
    """Close a TCP connection with a reset (the peer sees ECONNRESET, not a clean end of data)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def _abnormal(task: asyncio.Task) -> bool:
    """Whether a copy direction ended by an error (a normal END seen while writing is not one)."""
    if not task.done() or task.cancelled() or task.exception() is None:
        return False
    exc = task.exception()
    return not (isinstance(exc, StreamError) and exc.reason is EndReason.DONE)


async def splice(stream: StreamLike, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 end_on_tcp_eof: bool, half_close_timeout: float = 30.0,
                 on_half_close: Callable[[], None] | None = None) -> None:
    """Copy until one side ends; ``on_half_close`` is told when the TCP side's EOF leaves the
    stream waiting for the rest of the answer (only without ``end_on_tcp_eof``)."""
    loop = asyncio.get_running_loop()
    last_data = loop.time()

    async def mesh_to_tcp() -> None:
        nonlocal last_data
        while data := await stream.read():
            last_data = loop.time()
            writer.write(data)
            await writer.drain()

    async def tcp_to_mesh() -> None:
        while data := await reader.read(CHUNK):
            await stream.write(data)

    downstream = asyncio.ensure_future(mesh_to_tcp())
    upstream = asyncio.ensure_future(tcp_to_mesh())
    finished = False  # stays False if the wait is cut short: idle timeout or cancellation (eviction)
    try:
        done, _ = await asyncio.wait([downstream, upstream], return_when=asyncio.FIRST_COMPLETED)
        if done == {upstream} and not _abnormal(upstream) and not end_on_tcp_eof:
            if on_half_close is not None:
                on_half_close()
            while not downstream.done() and (idle := last_data + half_close_timeout - loop.time()) > 0:
                await asyncio.wait([downstream], timeout=idle)
        finished = downstream.done() or end_on_tcp_eof
    finally:
        for task in (downstream, upstream):
            task.cancel()
        await asyncio.gather(downstream, upstream, return_exceptions=True)
        abnormal = not finished or _abnormal(downstream) or _abnormal(upstream)
        with contextlib.suppress(Exception):
            await stream.close(EndReason.MISC if abnormal else EndReason.DONE)
        if abnormal:
            reset(writer)
        else:
            writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
