"""The private Prometheus ``/metrics`` of a relay or a client (docs/metrics.md).

Live counters are a correlation oracle: polled while a target's traffic flows, they tell an observer
which relay carries its circuit. So they are never on the public link port (whose ``/healthz`` says
only ``ok``) but on a listener of their own, on loopback unless the operator explicitly allows
otherwise (``metrics.listen``, ``metrics.allow_remote``).

Nothing is counted twice: the collector reads the node's own counters (``Node.metrics``, plain ints
in the pure core), its build-time histogram and the transports' dial counts at scrape time.
Every process has its own ``CollectorRegistry``, never prometheus-client's global one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from zmesh.aio.driver import NodeDriver
from zmesh.aio.transport import count_by_transport
from zmesh.cells import DestroyReason, EndReason
from zmesh_signal.metrics import scrape

from .listener import Listener
from .transports import NativeTransports

log = logging.getLogger(__name__)

PATH = "/metrics"
DESTROY_REASONS = tuple(reason.name.lower() for reason in DestroyReason)
# What an exit's stream attempt came to: connected, or the END reason it was refused with.
EXIT_RESULTS = ("connected", *(reason.name.lower() for reason in (
    EndReason.EXIT_POLICY, EndReason.RESOLVE_FAILED, EndReason.CONNECT_REFUSED, EndReason.TIMEOUT,
    EndReason.UPSTREAM_FAILED, EndReason.MISC)))
EXIT_COUNTER = "exit_connections_"  # + an EXIT_RESULTS value: the relay's key in Node.metrics
TRANSPORTS = ("webrtc", "websocket")

# Counters with one label, each label value one key of Node.metrics.
_LABELLED: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("zmesh_circuits_created", "circuits opened: built by this node (origin) or answered as a hop (relay)",
     "role", {"origin": "circuits_built", "relay": "circuits_relayed"}),
    ("zmesh_cells", "link cells received (in) and sent (out)", "direction", {"in": "cells_in", "out": "cells_out"}),
    ("zmesh_link_bytes", "link frame bytes received (in) and sent (out)", "direction",
     {"in": "bytes_in", "out": "bytes_out"}),
    ("zmesh_handshakes", "circuit handshakes (CREATE) by result", "result",
     {"answered": "handshakes", "queue_full": "handshakes_refused_queue_full", "expired": "handshakes_expired"}),
    ("zmesh_cells_dropped", "cells discarded: for no known circuit, or a relay command this version does not know",
     "reason", {"unknown_circuit": "cells_unknown_circuit", "unknown_command": "relay_unknown_commands"}),
    ("zmesh_links_refused", "inbound links refused: over max_links, the per-address limit, or the peer limit",
     "reason", {"max_links": "links_refused", "per_address": "links_refused_per_address",
                "peer_limit": "links_refused_peer_limit"}),
    ("zmesh_links_dropped", "links this node closed on its peer, by why", "reason",
     {"dead": "links_dead", "queue_bound": "links_over_queue_bound", "auth_failed": "link_auth_failures",
      "malformed_frame": "malformed_frames", "peer_limit": "peer_links_closed_for_limit"}),
)
# Counters without labels.
_PLAIN = (
    ("zmesh_circuit_builds_started", "circuits this node started building", "circuits_started"),
    ("zmesh_cells_relayed", "RELAY cells passed on to the next or previous hop", "cells_relayed"),
    ("zmesh_data_cells_sent", "DATA cells this node sent as a stream end (client or exit)", "data_cells_sent"),
    ("zmesh_links_authenticated", "inbound links whose dialer proved its PeerId", "links_authenticated"),
)
# Counters labelled by the suffix of their Node.metrics keys.
_SUFFIXED = (
    ("zmesh_circuits_closed", "circuits closed, by the DESTROY reason", "reason", "circuits_closed_",
     DESTROY_REASONS),
    ("zmesh_circuit_build_failures", "circuits this node built that closed before they opened, by reason",
     "reason", "circuit_build_failures_", DESTROY_REASONS),
    ("zmesh_circuit_faults", "circuits destroyed for what a peer sent: a protocol violation, tampering, or "
     "more than a limit allows", "reason", "circuit_failures_", ("protocol", "resource_limit", "tampered")),
    ("zmesh_exit_connections", "exit streams: connected, or the END reason they were refused with", "result",
     EXIT_COUNTER, EXIT_RESULTS),
)
# Keys covered by other metrics: circuits_destroyed is the sum of zmesh_circuits_closed_total.
_COVERED = {"circuits_destroyed", "create_refused", "create_refused_full"}


class Observed(Protocol):
    """A relay or a client: its driver and transports exist once it has started."""

    driver: NodeDriver | None
    transports: NativeTransports | None


class NodeCollector(Collector):
    """Reads one node's counters at each scrape; before ``start`` it has nothing to report."""

    def __init__(self, source: Observed) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        driver = self._source.driver
        if driver is None:
            return
        node = driver.node
        counts = dict(node.metrics)
        seen = set(_COVERED)
        for name, documentation, label, keys in _LABELLED:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for value, key in keys.items():
                family.add_metric([value], counts.get(key, 0))
                seen.add(key)
            yield family
        for name, documentation, key in _PLAIN:
            yield CounterMetricFamily(name, documentation, value=counts.get(key, 0))
            seen.add(key)
        for name, documentation, label, prefix, known in _SUFFIXED:
            family = CounterMetricFamily(name, documentation, labels=[label])
            values = {value: counts.get(prefix + value, 0) for value in known}
            values.update({key[len(prefix):]: n for key, n in counts.items() if key.startswith(prefix)})
            for value, n in sorted(values.items()):
                family.add_metric([value], n)
            seen.update(prefix + value for value in values)
            yield family
        refused, full = counts.get("create_refused", 0), counts.get("create_refused_full", 0)
        family = CounterMetricFamily("zmesh_creates_refused", "CREATEs refused at once: this node is full, or "
                                     "takes no circuits from that side of the link", labels=["reason"])
        family.add_metric(["full"], full)
        family.add_metric(["not_accepted"], refused - full)
        yield family
        # "out" counts the link PADDING cells this node's padding machines queued (zmesh.padnego) and
        # the DROP cells its circuit-setup machines sent (zmesh.setuppad; also padding_setup_cells_out)
        family = CounterMetricFamily("zmesh_padding_cells", "padding cells (link PADDING and long-range DROP)",
                                     labels=["direction"])
        family.add_metric(["in"], counts.get("padding_cells_in", 0))
        family.add_metric(["out"], counts.get("padding_cells_out", 0))
        seen.update(("padding_cells_in", "padding_cells_out"))
        yield family
        family = CounterMetricFamily("zmesh_node_events", "other counters of the node's core, by name",
                                     labels=["event"])
        for key in sorted(set(counts) - seen):
            family.add_metric([key], counts[key])
        yield family
        yield from self._gauges(driver)
        yield self._build_histogram(driver)
        yield from self._transport(driver)

    @staticmethod
    def _gauges(driver: NodeDriver) -> Iterator[Metric]:
        family = GaugeMetricFamily("zmesh_circuits_active", "open circuits by role", labels=["role"])
        for role, count in driver.node.circuit_counts().items():
            family.add_metric([role], count)
        yield family
        family = GaugeMetricFamily("zmesh_onion_points", "onion-service intro and rendezvous points this relay "
                                   "serves now (docs/onion-services.md)", labels=["kind"])
        for kind, count in driver.node.point_counts().items():
            family.add_metric([kind], count)
        yield family
        yield GaugeMetricFamily("zmesh_buffered_bytes", "bytes of cells queued in this node for their links",
                                value=driver.node.buffered_bytes())
        node = driver.node
        yield GaugeMetricFamily("zmesh_network_size", "nodes in the directory this node last read (-1: none yet)",
                                value=-1 if node.network_size is None else node.network_size)
        yield GaugeMetricFamily("zmesh_peer_link_limit", "peer links this node keeps in that network (-1: none yet)",
                                value=-1 if (limit := node.peer_limit()) is None else limit)

    @staticmethod
    def _build_histogram(driver: NodeDriver) -> Metric:
        histogram = driver.node.build_seconds
        buckets = [("+Inf" if math.isinf(bound) else repr(bound), count) for bound, count in histogram.cumulative()]
        return HistogramMetricFamily("zmesh_circuit_build_duration_seconds",
                                     "time to build this node's own circuits (CREATE to the last hop's answer)",
                                     buckets=buckets, sum_value=histogram.sum)

    def _transport(self, driver: NodeDriver) -> Iterator[Metric]:
        links = {transport: 0 for transport in TRANSPORTS}
        links.update(count_by_transport(driver.links().values()))
        family = GaugeMetricFamily("zmesh_links", "open links by transport", labels=["transport"])
        for transport, count in sorted(links.items()):
            family.add_metric([transport], count)
        yield family
        transports = self._source.transports
        if transports is None:
            return
        stats = transports.dialer.stats
        family = CounterMetricFamily("zmesh_link_dials", "links this node dialed, by transport", labels=["transport"])
        for transport in TRANSPORTS:
            family.add_metric([transport], stats[transport])
        yield family
        yield CounterMetricFamily("zmesh_link_dial_fallbacks", "dials that fell back to the other transport",
                                  value=stats["fallbacks"])
        yield CounterMetricFamily("zmesh_link_dials_not_retried",
                                  "dials refused because the peer's last dial failed just before",
                                  value=stats["not_retried"])
        yield GaugeMetricFamily("zmesh_webrtc_signaling_up", "1 while the WebRTC signaling session is open",
                                value=1 if stats["signaling"] else 0)


def registry_for(source: Observed) -> CollectorRegistry:
    """A registry of its own for one node: its counters, and the process's CPU and memory."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(source))
    ProcessCollector(registry=registry)
    return registry


class MetricsListener:
    """Serves ``/metrics`` (and nothing else) on its own socket, never on the public link port."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._listener = Listener("metrics.listen")

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (validated by the config: loopback unless allowed); return the port."""
        app = web.Application()
        app.router.add_get(PATH, self._scrape)
        return await self._listener.start(app, host, port)

    async def _scrape(self, request: web.Request) -> web.Response:
        return scrape(self.registry)

    async def close(self) -> None:
        await self._listener.close()
