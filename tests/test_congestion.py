"""Congestion control, authenticated SENDMEs and XON/XOFF (docs/protocol.md §10; issue 16 item 2):
the Vegas controller on a simulated bottleneck (fake clock), per-hop negotiation with older peers on
the path, forged SENDMEs against a real exit, and XON/XOFF with a reader that stops."""

import asyncio
import heapq
import os

import pytest

from tests.conftest import wait_until
from tests.test_acceptance import open_stream
from zmesh.cells import CELL_SIZE, RELAY_DATA_SIZE, DestroyReason, RelayCommand, encode_relay_body
from zmesh.congestion import SENDME_EVERY, VegasFlow, VegasParams
from zmesh.errors import ConfigError, ProtocolError
from zmesh.events import CircuitClosed, StreamData
from zmesh.flow import CIRCUIT_WINDOW, CircuitWindow, StreamWindow
from zmesh.links import CircuitFailure
from zmesh.negotiation import queue_bound
from zmesh.node import NodeLimits
from zmesh.streamflow import XonXoff, encode_xon, parse_xon
from zmesh.testing.memnet import MemoryNetwork, blob_service

MB = 1_000_000


def _bodies(count: int) -> list[bytearray]:
    """Sealed-looking DATA bodies: each digest field holds a distinct tag."""
    bodies = []
    for _ in range(count):
        body = bytearray(64)
        body[8:16] = os.urandom(8)
        bodies.append(body)
    return bodies


def _simulate(rate_bytes: float, rtt: float, seconds: float, cap: int = 4096,
              early_exit: int | None = None) -> tuple[float, float, VegasFlow]:
    """One VegasFlow sender through a bottleneck of ``rate_bytes`` (bytes of cells per second) with
    base round trip ``rtt``: returns (delivered ÷ bottleneck over the second half, worst queueing
    delay, the flow). Event-driven on simulated time; the receiver is a second VegasFlow."""
    sender, receiver = VegasFlow(cap), VegasFlow(cap)
    if early_exit is not None:  # as if a burst of RTT noise had ended slow start at this window
        sender.cwnd, sender.slow_start = early_exit, False
    service = CELL_SIZE / rate_bytes  # seconds per cell at the bottleneck
    acks: list[tuple[float, int, bytes]] = []
    now, free_at, worst, delivered, seq = 0.0, 0.0, 0.0, 0, 0
    while now < seconds:
        room = sender.room()
        if room:
            bodies = _bodies(room)
            sender.sent(bodies, now)
            for body in bodies:
                start = max(now, free_at)
                free_at = start + service
                if now > seconds / 4:
                    worst = max(worst, start - now)
                arrival = free_at + rtt / 2
                if arrival >= seconds / 2:
                    delivered += arrival < seconds
                sendme = receiver.received(bytes(body[8:16]))
                if sendme is not None:
                    seq += 1
                    heapq.heappush(acks, (arrival + rtt / 2, seq, sendme))
        now, _, sendme = heapq.heappop(acks)
        sender.on_sendme(sendme, now)
    return delivered * CELL_SIZE / (seconds / 2) / rate_bytes, worst, sender


@pytest.mark.parametrize("rtt", [0.02, 0.1, 0.3])
def test_vegas_fills_a_10_MBps_bottleneck_without_a_standing_queue(rtt):
    """Rates are bytes of cells per second, windows cells: at 10 MB/s and any of these round trips
    one circuit keeps the bottleneck ≥ 90 % busy while the queue it adds stays under 2 × base RTT."""
    fraction, worst_queue, flow = _simulate(10 * MB, rtt, seconds=max(8.0, 60 * rtt))
    assert fraction >= 0.9, (fraction, flow.cwnd)
    assert worst_queue < 2 * rtt, worst_queue
    assert not flow.slow_start and rtt <= flow.min_rtt < 1.2 * rtt
    # the window sits near the bandwidth-delay product, counted in cells (not bytes, not bits)
    bdp_cells = 10 * MB * rtt / CELL_SIZE
    assert bdp_cells * 0.9 <= flow.cwnd <= bdp_cells * 1.5 + 2 * VegasParams().delta
    assert flow.rate_bytes_per_s() == pytest.approx(flow.cwnd * CELL_SIZE / flow.ewma_rtt)


def test_a_window_that_left_slow_start_early_regains_the_path_in_a_few_seconds():
    """At 300 ms, 256 cells is a tenth of the path; one step (32 cells) per round trip would need
    80 round trips (24 s) to fill it (that rule moves 39 % of the bottleneck over seconds 6–12).
    Closing half the gap to alpha per round trip fills it in the first 6 s."""
    fraction, _, flow = _simulate(10 * MB, 0.3, seconds=12.0, early_exit=256)
    assert fraction >= 0.9, (fraction, flow.cwnd)


def test_the_window_never_passes_the_negotiated_cap():
    fraction, _, flow = _simulate(10 * MB, 0.3, seconds=10.0, cap=1000)
    assert flow.cwnd == 1000 and flow.inflight <= 1000
    assert 0.3 < fraction < 0.4  # 1000 cells per 300 ms is 3.4 MB/s: the cap, honestly


def test_vegas_params_are_validated():
    with pytest.raises(ConfigError, match="cwnd_min"):
        VegasParams(cwnd_min=0)
    with pytest.raises(ConfigError, match="alpha"):
        VegasParams(alpha=500, beta=100)


@pytest.mark.parametrize("forgery", ["random tag", "no tag", "nothing sent yet", "too many"])
def test_a_sendme_that_names_no_sent_cell_is_refused_with_bad_sendme(forgery):
    flow = VegasFlow(4096)
    receiver = VegasFlow(4096)
    if forgery != "nothing sent yet":
        bodies = _bodies(SENDME_EVERY)
        flow.sent(bodies, 1.0)
        honest = [receiver.received(bytes(b[8:16])) for b in bodies][-1]
    payload = {"random tag": b"\x01" + os.urandom(8), "no tag": b"", "nothing sent yet": b"\x01" + bytes(8),
               "too many": None}[forgery]
    if forgery == "too many":
        flow.on_sendme(honest, 1.1)  # the honest one is accepted ...
        payload = honest  # ... and the same acknowledgement again names no cell still expected
    with pytest.raises(CircuitFailure) as info:
        flow.on_sendme(payload, 1.2)
    assert info.value.reason is DestroyReason.BAD_SENDME


def test_xon_xoff_bounds_one_stream_and_advises_the_drain_rate_in_bytes_per_second():
    flow = XonXoff(xoff_cells=100, cap=1000)
    due = [flow.received(10.0) for _ in range(100)]
    assert due[:99] == [None] * 99 and due[99] == b""  # XOFF at 100 cells
    assert all(flow.received(10.0) is None for _ in range(50))  # in flight when XOFF left: no second XOFF
    assert flow.consume(60, 11.0) == []  # 90 left: above half
    ((command, payload),) = flow.consume(60, 12.0)  # 30 left: XON
    assert command is RelayCommand.XON
    assert parse_xon(payload) == 120 * RELAY_DATA_SIZE // 2  # 120 cells drained in the 2 s since XOFF
    sender = XonXoff(xoff_cells=100, cap=1000)
    sender.on_xoff()
    assert sender.room() == 0
    sender.on_xon(encode_xon(5 * MB))
    assert sender.room() > 0 and sender.advised_rate == 5 * MB
    with pytest.raises(ProtocolError):
        parse_xon(b"\x00\x01")
    with pytest.raises(ProtocolError):
        StreamWindow().on_xoff()


def test_a_sender_that_ignores_xoff_loses_its_circuit():
    flow = XonXoff(xoff_cells=10, cap=100)
    for _ in range(110):
        flow.received(1.0)
    with pytest.raises(CircuitFailure) as info:
        flow.received(1.0)
    assert info.value.reason is DestroyReason.FLOW_VIOLATION


# ---------------------------------------------------------------------- negotiation on real nodes


async def _open(provider, **limits):
    """``test_acceptance.open_stream`` with the middle too: (wire, client, middle, exit, circuit,
    stream, the exit's circuit handle)."""
    wire, client, exit_, circuit, stream, exit_circuit = await open_stream(provider, **limits)
    middle = next(node for node in wire.nodes.values() if node not in (client, exit_))
    return wire, client, middle, exit_, circuit, stream, exit_circuit


OLD = NodeLimits(cc_max_window=0)  # answers no CC_OFFER (drops it as an unknown command): an older node


@pytest.mark.parametrize("older", [None, "middle", "exit", "client"])
def test_each_hop_negotiates_and_an_older_peer_keeps_fixed_windows(provider, older):
    """docs/protocol.md §10: with every node new, both ends run Vegas under the least window any hop
    granted; an older middle caps the window at the fixed CIRCUIT_WINDOW its queue bound was made
    for; an older exit (or client) leaves the circuit on fixed windows. Data flows either way."""
    async def main():
        limits = {"client_limits": None, "middle_limits": NodeLimits(cc_max_window=2048), "exit_limits": None}
        if older:
            limits[f"{older}_limits"] = OLD
        wire, client, middle, exit_, circuit, stream, exit_circuit = await _open(provider, **limits)
        client_edge, exit_edge = client._circuits[circuit].edge, exit_._circuits[exit_circuit].edge
        if older in ("exit", "client"):
            assert isinstance(client_edge.flow, CircuitWindow) and isinstance(exit_edge.flow, CircuitWindow)
            assert isinstance(client_edge.streams[stream].flow, StreamWindow)
            assert isinstance(exit_edge.streams[stream].flow, StreamWindow)
        else:
            window = CIRCUIT_WINDOW if older == "middle" else 2048
            assert isinstance(client_edge.flow, VegasFlow) and isinstance(exit_edge.flow, VegasFlow)
            assert client_edge.flow.cap == exit_edge.flow.cap == window
            assert isinstance(client_edge.streams[stream].flow, XonXoff)
            assert isinstance(exit_edge.streams[stream].flow, XonXoff)
        payload = os.urandom(1200 * RELAY_DATA_SIZE)  # past a fixed stream window: SENDMEs must flow
        sent, parts = 0, []
        while sent < len(payload) or sum(map(len, parts)) < len(payload):
            sent += await exit_.send(exit_circuit, stream, payload[sent:])
            await wire.pump()
            got = [e.data for e in wire.events[client] if isinstance(e, StreamData)]
            wire.events[client].clear()
            parts += got
            await client.consume(circuit, stream, len(got))
            await wire.pump()
        assert b"".join(parts) == payload
        assert client.circuits() == [circuit] and exit_.circuits() == [exit_circuit]

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["congestion-control", "fixed-windows"])
def test_a_client_forging_a_sendme_loses_its_circuit(provider, mode):
    """The exit checks every circuit SENDME: under congestion control one that names no cell the
    exit sent is BAD_SENDME; on fixed windows one past the window is still a PROTOCOL failure."""
    async def main():
        limits = NodeLimits() if mode == "congestion-control" else OLD
        wire, client, middle, exit_, circuit, stream, exit_circuit = await _open(provider, exit_limits=limits)
        await exit_.send(exit_circuit, stream, os.urandom(40 * RELAY_DATA_SIZE))
        forged = b"\x01" + os.urandom(8) if mode == "congestion-control" else b""
        circ = client._circuits[circuit]
        for _ in range(1 if mode == "congestion-control" else CIRCUIT_WINDOW // 100 + 1):
            await client._send_edge(circ, [encode_relay_body(RelayCommand.SENDME, 0, forged)])
        await wire.pump()
        reason = DestroyReason.BAD_SENDME if mode == "congestion-control" else DestroyReason.PROTOCOL
        assert exit_.metrics[f"circuit_failures_{reason.name.lower()}"] == 1
        assert exit_.circuits() == [] and middle.circuits() == [] and client.circuits() == []
        assert [(e.reason, e.origin) for e in wire.events[client] if isinstance(e, CircuitClosed)] == [(reason, True)]

    asyncio.run(main())


def test_a_hop_refuses_a_second_offer_and_an_accept_answers_only_an_offer(provider):
    async def main():
        wire, client, middle, exit_, circuit, stream, exit_circuit = await _open(provider)
        circ = client._circuits[circuit]
        await client._send_edge(circ, [encode_relay_body(RelayCommand.CC_OFFER, 0, bytes([1, SENDME_EVERY]) +
                                                         (4096).to_bytes(4, "big"))])
        await wire.pump()  # the exit is in EDGE state now: the table refuses the offer
        assert exit_.metrics["circuit_failures_protocol"] == 1 and client.circuits() == []
        wire, client, middle, exit_, circuit, stream, exit_circuit = await _open(provider)
        await exit_._send_edge(exit_._circuits[exit_circuit],
                               [encode_relay_body(RelayCommand.CC_ACCEPT, 0, b"\x01" + (4096).to_bytes(4, "big"))])
        await wire.pump()
        assert client.metrics["circuit_failures_protocol"] == 1 and exit_.circuits() == []

    asyncio.run(main())


@pytest.mark.parametrize("message", ["stream SENDME", "malformed XON"])
def test_a_congestion_controlled_stream_refuses_window_messages(provider, message):
    """Streams on a congestion-controlled circuit have no window: a stream SENDME, like an XON
    that does not parse, is a protocol failure that destroys the circuit."""
    async def main():
        wire, client, middle, exit_, circuit, stream, exit_circuit = await _open(provider)
        command, payload = ((RelayCommand.SENDME, b"") if message == "stream SENDME" else (RelayCommand.XON, b"\x00"))
        await client._send_edge(client._circuits[circuit], [encode_relay_body(command, stream, payload)])
        await wire.pump()
        assert exit_.metrics["circuit_failures_protocol"] == 1
        assert exit_.circuits() == [] and client.circuits() == []

    asyncio.run(main())


# ---------------------------------------------------------------------- on a memory mesh with drivers


def test_a_forging_client_cannot_make_the_exit_send_unboundedly(provider):
    """A client that reads nothing and acknowledges what it never received (issue 16): the exit
    detects the first forged SENDME and destroys the circuit (BAD_SENDME); until then it never
    holds more than the window's queue bound for the circuit."""
    async def main():
        net = MemoryNetwork(provider, link_capacity=64 * 1024)
        client = await net.add_node()
        middle = await net.add_node()
        exit_ = await net.add_node(exit=True, stream_handler=blob_service(os.urandom(64 * 2**20)))
        path = [net.descriptors[d.node.identity.peer_id] for d in (middle, exit_)]
        closed = []
        client.on_event = lambda e: closed.append(e.reason) if isinstance(e, CircuitClosed) else None
        try:
            circuit = await client.build_circuit(path)
            await client.open_stream(circuit, "files.test", 80)  # and never read
            circ = client.node._circuits[circuit]
            peak = 0
            for _ in range(200):  # an acknowledgement "for" every 32 cells, none of them received
                await client._call(client.node._send_edge, circ,
                                   [encode_relay_body(RelayCommand.SENDME, 0, b"\x01" + os.urandom(8))])
                peak = max(peak, exit_.node.buffered_bytes())
                if closed:
                    break
                await asyncio.sleep(0)
            await wait_until(lambda: closed)
        finally:
            await net.close()
        assert closed == [DestroyReason.BAD_SENDME]
        assert exit_.node.metrics["circuit_failures_bad_sendme"] == 1
        assert peak <= queue_bound(4096) * CELL_SIZE

    asyncio.run(main())


def test_a_reader_that_stops_gets_xoff_and_the_exit_stops_reading_its_source(provider):
    """With congestion control no stream window stops the exit: the client's XOFF does. The exit's
    writer then waits (its upstream is not read), what the client buffers stays under xoff + window,
    and reading again sends XON and the whole payload arrives."""
    payload = os.urandom(8 * 2**20)
    progress = {"written": 0}

    async def source(request):
        stream = await request.accept()
        for i in range(0, len(payload), 64 * 1024):  # an upstream socket, read 64 KiB at a time
            await stream.write(payload[i:i + 64 * 1024])
            progress["written"] = i + 64 * 1024
        await stream.close()

    async def main():
        net = MemoryNetwork(provider)
        client = await net.add_node()
        middle = await net.add_node()
        exit_ = await net.add_node(exit=True, stream_handler=source)
        path = [net.descriptors[d.node.identity.peer_id] for d in (middle, exit_)]
        try:
            circuit = await client.build_circuit(path)
            stream = await client.open_stream(circuit, "files.test", 80)
            exit_circ = next(iter(exit_.node._circuits.values()))
            await wait_until(lambda: any(s.flow.stopped for s in exit_circ.edge.streams.values()))
            await wait_until(lambda: net.queued_bytes(path[0].peer_id) == net.queued_bytes(path[1].peer_id) == 0)
            window = exit_circ.edge.flow.cap
            bound = (NodeLimits().xoff_cells + window) * RELAY_DATA_SIZE
            assert len(b"".join(stream._chunks)) <= bound
            assert progress["written"] <= bound + 64 * 1024 < len(payload)  # the source waits, unread
            parts = []
            while part := await asyncio.wait_for(stream.read(), 30):
                parts.append(part)
        finally:
            await net.close()
        assert b"".join(parts) == payload
        assert client.node.metrics["xoff_sent"] >= 1 and client.node.metrics["xon_sent"] >= 1

    asyncio.run(main())


# ---------------------------------------------------------------------- real relay processes


def test_a_forging_client_is_cut_off_by_a_real_exit(tmp_path, monkeypatch):
    """The same attack against three real `zmesh relay` processes, the middle one configured as an
    older relay (``core.cc_max_window = 0``; a mixed path, whichever hop it becomes): an in-process client GETs a 10 MiB
    file, reads none of it and forges a SENDME. The exit process destroys the circuit
    (its circuit_faults{reason=bad_sendme} counts it), the client's stream fails, and what the
    exit buffers stays under the congestion-controlled circuit's bound."""
    import zmesh
    from zmesh.errors import StreamError

    from .private_network import PRIVATE_NETWORK_ENV
    from .test_native_mesh import Process, _http_server

    monkeypatch.setenv(PRIVATE_NETWORK_ENV, "true")
    files, files_port = _http_server()
    processes = [Process("signal", "--listen", "127.0.0.1:0")]
    url = processes[0].address[0]
    try:
        for n in range(1, 4):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if n == 3 else []
            older = {"ZMESH_CORE_CC_MAX_WINDOW": "0"} if n == 2 else None  # behaves as an older relay
            processes.append(Process("relay", "--signal", url, "--listen", f"127.{n}.0.1:0", "--metrics",
                                     "127.0.0.1:0", "--data-dir", str(tmp_path / f"r{n}"), *extra, env=older))
        exit_process = processes[-1]
        held = []  # what the exit buffered while the client read nothing

        async def attack() -> None:
            vpn = await zmesh.connect(url, hops=3)
            try:
                stream = await vpn.open_stream("127.0.0.1", files_port)
                await stream.write(b"GET /big HTTP/1.0\r\n\r\n")
                node = vpn.driver.node
                circ = node._circuits[stream.circuit]
                # the exit negotiated congestion control; the silent older relay capped the window
                assert isinstance(circ.edge.flow, VegasFlow) and circ.edge.flow.cap == CIRCUIT_WINDOW
                await wait_until(lambda: stream._chunks)  # the exit is sending
                held.append((await asyncio.to_thread(exit_process.scrape))("zmesh_buffered_bytes"))
                await vpn.driver._call(node._send_edge, circ, [
                    encode_relay_body(RelayCommand.SENDME, 0, b"\x01" + os.urandom(8))])
                with pytest.raises(StreamError):
                    while await asyncio.wait_for(stream.read(), 30):
                        pass
            finally:
                await vpn.close()

        asyncio.run(asyncio.wait_for(attack(), 90))
        scrape = exit_process.scrape()
        assert scrape("zmesh_circuit_faults_total", reason="bad_sendme") == 1
        assert held[0] <= queue_bound(CIRCUIT_WINDOW) * CELL_SIZE
        assert scrape("zmesh_circuits_active", role="relay") == 0
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
