"""Copy bytes both ways between a mesh stream and a TCP connection, with backpressure.

Used by the exit (mesh ↔ target) and the SOCKS front (application ↔ mesh). zmesh streams have no
half-close (END closes both ways, as in Tor), so EOF needs a rule per side:
- at the exit, the target's EOF means its answer is complete: END the stream once it is all sent;
- at the SOCKS front, the application's EOF only means "done sending" (``shutdown(SHUT_WR)``):
  keep delivering the answer until the exit ends the stream.
Nothing already received is dropped in either case.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

CHUNK = 64 * 1024


class StreamLike(Protocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


async def splice(stream: StreamLike, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 end_on_tcp_eof: bool) -> None:
    async def mesh_to_tcp() -> None:
        while data := await stream.read():
            writer.write(data)
            await writer.drain()

    async def tcp_to_mesh() -> None:
        while data := await reader.read(CHUNK):
            await stream.write(data)

    downstream = asyncio.ensure_future(mesh_to_tcp())
    upstream = asyncio.ensure_future(tcp_to_mesh())
    try:
        done, _ = await asyncio.wait([downstream, upstream], return_when=asyncio.FIRST_COMPLETED)
        if upstream in done and downstream not in done and not end_on_tcp_eof:
            await downstream
    finally:
        for task in (downstream, upstream):
            task.cancel()
        await asyncio.gather(downstream, upstream, return_exceptions=True)
        with contextlib.suppress(Exception):
            await stream.close()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
