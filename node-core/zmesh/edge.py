"""Streams at either end of a circuit: BEGIN, CONNECTED, DATA, END and SENDME flow control
(docs/protocol.md §6–7), the same code at the client and at the exit or destination.

``EdgeRole`` is one part of ``node.Node``. Sending goes through ``_send_edge``: the circuit wraps
the bodies in its layers (``circuit.OriginCircuit.wrap`` / ``RelayCircuit.wrap``) and
``cells.relay_cells`` makes the cells.
"""

from __future__ import annotations

from .cells import (
    RELAY_DATA_SIZE,
    DestroyReason,
    EndReason,
    RelayCommand,
    RelayMessage,
    encode_relay_body,
    relay_cells,
    split_bodies,
)
from .circuit import OriginCircuit, RelayCircuit, RelayState, Stream, StreamState
from .errors import InvalidState, ProtocolError
from .events import StreamData, StreamEnded, StreamRequested, StreamWritable
from .links import CircuitFailure
from .streams import parse_target

_Circuit = OriginCircuit | RelayCircuit


class EdgeRole:
    """Streams on circuits that end here (the part of ``Node`` that is a circuit's end)."""

    # ------------------------------------------------------------------ application interface

    async def accept_stream(self, circuit: int, stream_id: int) -> None:
        """At an edge: the target is connected; tell the client (CONNECTED)."""
        circ, stream = self._stream(circuit, stream_id)
        if stream.state != StreamState.CONNECTING:
            raise InvalidState("stream is already open")
        stream.state = StreamState.OPEN
        await self._send_edge(circ, [encode_relay_body(RelayCommand.CONNECTED, stream_id, b"")])

    async def end_stream(self, circuit: int, stream_id: int, reason: EndReason = EndReason.DONE) -> None:
        """Close a stream (END); data already sent is delivered first. Unknown streams are ignored."""
        circ = self._circuits.get(circuit)
        edge = circ.edge if circ is not None else None
        if edge is None or edge.streams.pop(stream_id, None) is None:
            return
        await self._send_edge(circ, [encode_relay_body(RelayCommand.END, stream_id, bytes([reason]))])

    async def send(self, circuit: int, stream_id: int, data: bytes) -> int:
        """Package as much of ``data`` as the windows allow; return how many bytes were taken.

        When less than offered was taken, ``StreamWritable`` announces when to offer the rest.
        """
        circ, stream = self._stream(circuit, stream_id)
        if stream.state != StreamState.OPEN:
            raise InvalidState("stream is not open yet")
        edge = circ.edge
        cells = min(stream.flow.room(), edge.flow.room(), -(-len(data) // RELAY_DATA_SIZE))
        if cells <= 0:
            stream.blocked = bool(data)
            return 0
        taken = min(len(data), cells * RELAY_DATA_SIZE)
        bodies = [encode_relay_body(RelayCommand.DATA, stream_id, data[i:i + RELAY_DATA_SIZE])
                  for i in range(0, taken, RELAY_DATA_SIZE)]
        stream.blocked = taken < len(data)
        await self._send_edge(circ, bodies)
        stream.flow.sent(len(bodies))
        edge.flow.sent(bodies, self.clock())  # sealed now: each body's digest field holds its tag
        self.metrics["data_cells_sent"] += len(bodies)
        return taken

    async def consume(self, circuit: int, stream_id: int, cells: int = 1) -> None:
        """The application has used ``cells`` StreamData events: acknowledge them (stream SENDME)."""
        circ = self._circuits.get(circuit)
        stream = circ.edge.streams.get(stream_id) if circ is not None and circ.edge else None
        if stream is None:
            return
        due = stream.flow.consume(cells, self.clock())
        if due:
            self.metrics["xon_sent"] += due[0][0] == RelayCommand.XON
            await self._send_edge(circ, [encode_relay_body(command, stream_id, payload) for command, payload in due])

    def _stream(self, circuit: int, stream_id: int) -> tuple[_Circuit, Stream]:
        circ = self._circuits.get(circuit)
        stream = circ.edge.streams.get(stream_id) if circ is not None and circ.edge else None
        if stream is None:
            raise InvalidState(f"no stream {stream_id} on circuit {circuit} (it may have ended)")
        return circ, stream

    async def _send_edge(self, circ: _Circuit, bodies: list[bytearray]) -> None:
        """Send relay bodies from this end of ``circ`` to the other end (or, while building, to the
        origin's last established hop)."""
        link_id, circ_id, data = await circ.wrap(bodies)
        self._enqueue(link_id, circ.handle, relay_cells(circ_id, split_bodies(data)))

    # ------------------------------------------------------------------ messages (zmesh.acceptance)

    async def _on_drop(self, circ: _Circuit, msg: RelayMessage) -> None:
        """Long-range padding: recognised, then discarded (and counted: the padding share)."""
        self.metrics["padding_cells_in"] += 1

    async def _on_begin(self, circ: RelayCircuit, msg: RelayMessage) -> None:
        circ.edge = circ.edge or self._new_edge(circ)
        circ.state = RelayState.EDGE
        await self._request_stream(circ, msg)

    async def _on_service_begin(self, circ: OriginCircuit, msg: RelayMessage) -> None:
        """A BEGIN from an onion service's client, over the joined rendezvous circuit."""
        await self._request_stream(circ, msg)

    async def _request_stream(self, circ: _Circuit, msg: RelayMessage) -> None:
        edge = circ.edge
        if not msg.stream_id or msg.stream_id in edge.streams:
            raise ProtocolError("BEGIN with a zero or duplicate stream id")
        if len(edge.streams) >= self.limits.max_streams_per_circuit:
            raise CircuitFailure(DestroyReason.RESOURCE_LIMIT, "too many streams")
        host, port = parse_target(msg.data)
        edge.streams[msg.stream_id] = Stream(msg.stream_id, StreamState.CONNECTING, edge.stream_flow())
        self._events.append(StreamRequested(circ.handle, msg.stream_id, host, port))

    async def _on_data(self, circ: _Circuit, msg: RelayMessage) -> None:
        if not msg.stream_id:
            raise ProtocolError("DATA on stream 0")
        edge = circ.edge
        sendme = edge.flow.received(msg.tag)
        if sendme is not None:
            await self._send_edge(circ, [encode_relay_body(RelayCommand.SENDME, 0, sendme)])
        stream = edge.streams.get(msg.stream_id)
        if stream is None:  # ended by us while the peer's data was in flight
            return
        if stream.state != StreamState.OPEN:
            raise ProtocolError("DATA on a stream that is not open")
        xoff = stream.flow.received(self.clock())
        if xoff is not None:
            self.metrics["xoff_sent"] += 1
            await self._send_edge(circ, [encode_relay_body(RelayCommand.XOFF, msg.stream_id, xoff)])
        self._events.append(StreamData(circ.handle, msg.stream_id, msg.data))

    async def _on_end(self, circ: _Circuit, msg: RelayMessage) -> None:
        if circ.edge.streams.pop(msg.stream_id, None) is not None:
            reason = msg.data[0] if msg.data else EndReason.MISC
            self._events.append(StreamEnded(circ.handle, msg.stream_id,
                                            EndReason(reason) if reason in EndReason._value2member_map_
                                            else EndReason.MISC))

    async def _on_sendme(self, circ: _Circuit, msg: RelayMessage) -> None:
        """A SENDME for more than was sent breaks the window (``flow.SendWindow``), a forged one the
        congestion window (``congestion.VegasFlow``): a peer fault either way."""
        edge = circ.edge
        stream = edge.streams.get(msg.stream_id)
        if msg.stream_id == 0:
            edge.flow.on_sendme(msg.data, self.clock())
        elif stream is not None:
            stream.flow.on_sendme()
        self._wake_blocked(circ)

    async def _on_xoff(self, circ: _Circuit, msg: RelayMessage) -> None:
        """The far end's reader is behind (docs/protocol.md §10): package nothing for the stream."""
        stream = circ.edge.streams.get(msg.stream_id)
        if stream is not None:
            stream.flow.on_xoff()

    async def _on_xon(self, circ: _Circuit, msg: RelayMessage) -> None:
        stream = circ.edge.streams.get(msg.stream_id)
        if stream is not None:
            stream.flow.on_xon(msg.data)
            self._wake_blocked(circ)

    def _wake_blocked(self, circ: _Circuit) -> None:
        """Announce ``StreamWritable`` for the streams that were refused and may send again."""
        edge = circ.edge
        if edge.flow.room() > 0:
            for blocked in edge.streams.values():
                if blocked.blocked and blocked.flow.room() > 0:
                    blocked.blocked = False
                    self._events.append(StreamWritable(circ.handle, blocked.stream_id))
