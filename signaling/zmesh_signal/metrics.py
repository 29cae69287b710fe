"""Prometheus collectors of one signal server, and the scrape response every zmesh ``/metrics`` uses.

Each app gets its own ``CollectorRegistry`` (never the process-wide default), so several servers
in one process — as in tests and ``zmesh demo`` — neither collide nor mix their numbers.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

# Label values known up front are created at start, so a scrape shows them at 0 before they occur.
DESCRIPTOR_RESULTS = ("accepted", "malformed", "invalid", "stale", "too_large", "full", "source_limit")
PROBE_RESULTS = ("reachable", "unreachable")
WS_MESSAGE_RESULTS = ("relayed", "bad_message", "bad_signature", "too_large", "offline", "busy",
                      "rate_limited", "directory_notice", "directory_notice_dropped")


class SignalMetrics:
    """The counters and gauges the server updates; ``scrape(self.registry)`` answers ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("zmesh_signal_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.descriptors = Counter("zmesh_signal_descriptors", "descriptor submissions by result",
                                   ["result"], registry=self.registry)
        self.ws_connections = Gauge("zmesh_signal_ws_connections", "open WebSocket connections",
                                    registry=self.registry)
        self.ws_messages = Counter("zmesh_signal_ws_messages",
                                   "WebSocket messages by result: relayed, or why they were rejected",
                                   ["result"], registry=self.registry)
        self.live_relays = Gauge("zmesh_signal_live_relays", "listed descriptors in the directory",
                                 registry=self.registry)
        self.probes = Counter("zmesh_signal_probes", "reachability probes of published relays by result",
                              ["result"], registry=self.registry)
        for result in DESCRIPTOR_RESULTS:
            self.descriptors.labels(result)
        for result in PROBE_RESULTS:
            self.probes.labels(result)
        for result in WS_MESSAGE_RESULTS:
            self.ws_messages.labels(result)


def scrape(registry: CollectorRegistry) -> web.Response:
    """A ``/metrics`` answer: the Prometheus text exposition of ``registry``, collected now."""
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
