"""A link over two channels: control cells on the reliable one, RELAY cells under FEC on a lossy one."""

import asyncio
import struct

from zmesh.aio.fec import FecChannelsLink
from zmesh.cells import BODY_SIZE, CELL_SIZE, CellCommand, encode_cell
from zmesh.testing.memlink import memory_link_pair


def _cell(command: CellCommand, seq: int) -> bytes:
    body = struct.pack(">I", seq)
    return encode_cell(command, 7, body.ljust(BODY_SIZE, b"\x00") if command == CellCommand.RELAY else body)


def _seq(cell: bytes) -> int:
    return struct.unpack(">I", cell[16:20])[0]


def test_each_kind_of_cell_keeps_its_order_and_losses_are_repaired():
    async def main():
        c1, c2 = memory_link_pair()
        l1, l2 = memory_link_pair(loss=0.05, seed=3)
        a, b = FecChannelsLink(c1, l1), FecChannelsLink(c2, l2)
        relay_sent, control_sent = 400, 40
        try:
            async def send_all():
                for i in range(relay_sent):
                    frame = _cell(CellCommand.RELAY, i)
                    if i % 10 == 0:  # a mixed frame: a control cell after a relay cell
                        frame += _cell(CellCommand.PING, i // 10)
                    await a.send(frame)

            sender = asyncio.create_task(send_all())
            relay, control = [], []
            while len(relay) + b.lost_frames < relay_sent or len(control) < control_sent:
                frame = await asyncio.wait_for(b.recv(), 10)
                for start in range(0, len(frame), CELL_SIZE):
                    cell = frame[start:start + CELL_SIZE]
                    (relay if cell[1] == CellCommand.RELAY else control).append(_seq(cell))
            await sender
            assert control == list(range(control_sent))  # reliable channel: all, in order
            assert relay == sorted(relay) and len(set(relay)) == len(relay)  # FEC: in order, never twice
            assert len(relay) >= 0.98 * relay_sent  # 5 % loss, repaired (a rare unrepairable gap is reported)
            assert l1.frames_sent > relay_sent  # repairs did go out on the lossy channel
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_closing_one_end_closes_the_other():
    async def main():
        c1, c2 = memory_link_pair()
        l1, l2 = memory_link_pair()
        a, b = FecChannelsLink(c1, l1), FecChannelsLink(c2, l2)
        await a.close()
        try:
            await asyncio.wait_for(b.recv(), 10)
        except Exception as exc:  # noqa: BLE001 - the type is what we check
            assert type(exc).__name__ == "LinkClosed"
        else:
            raise AssertionError("recv after the peer closed returned a frame")
        await b.close()

    asyncio.run(main())
