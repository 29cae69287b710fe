"""Which cell goes on which channel when one zmesh link runs over two: cells that steer circuits on a
reliable, ordered channel, and RELAY cells (all of a circuit's data) under Tetrys FEC on an
unordered, unreliable one.

That is what WebRTC offers a link with a second DataChannel (``ordered: false, maxRetransmits: 0``):
a lost packet is repaired from the next repair symbol instead of waiting for a retransmission, and
one loss does not hold up every circuit on the link. RELAY cells keep their order among themselves
(``FecLink`` delivers in order), which is what relay crypto needs; CREATE/CREATED/DESTROY, PING/PONG
and link authentication keep theirs on the control channel. The two orders are independent: a
DESTROY may overtake RELAY cells still in flight, which only ends a circuit that is ending anyway,
and no RELAY cell is sent on a circuit before its CREATED has arrived. A loss FEC could not repair
breaks the running digest of that circuit at the next cell, so the circuit is torn down (the link
stays up); ``lost_frames`` counts such gaps. The asyncio link that does all this is
``zmesh.aio.fec.FecChannelsLink``.
"""

from __future__ import annotations

from ..cells import CELL_SIZE, CellCommand

_RELAY = int(CellCommand.RELAY)


def split_by_channel(frame: bytes) -> list[tuple[bool, bytes]]:
    """Split a frame of cells into what goes where, in order: ``(True, cell)`` for each RELAY cell
    (one per FEC packet on the lossy channel), ``(False, cells)`` for each run of other cells (one
    frame on the control channel), so control cells keep their order with respect to each other."""
    parts: list[tuple[bool, bytes]] = []
    control: list[bytes] = []
    for start in range(0, len(frame), CELL_SIZE):
        cell = frame[start:start + CELL_SIZE]
        if len(cell) == CELL_SIZE and cell[1] == _RELAY:
            if control:
                parts.append((False, b"".join(control)))
                control.clear()
            parts.append((True, cell))
        else:
            control.append(cell)
    if control:
        parts.append((False, b"".join(control)))
    return parts
