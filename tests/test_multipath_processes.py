"""A multipath stream through real relay processes: ``zmesh client --multipath`` (here through
``ZMESH_CLIENT_MULTIPATH``) splits a SOCKS connection over two circuits that share only the exit,
and a 10 MiB download arrives byte-exact, with the exit's counters showing the set and its second
leg (docs/protocol.md "Multipath")."""

import asyncio
import hashlib

from .test_native_mesh import PAYLOAD, _http_server, fetch, start_mesh


def test_a_multipath_download_through_relay_processes_is_byte_exact(tmp_path):
    files, files_port = _http_server()
    processes, _ = start_mesh(tmp_path, files_port, relays=5, exits=1, env={"ZMESH_CLIENT_MULTIPATH": "true"})
    try:
        host, port = processes[-1].address[0].rsplit(":", 1)
        body = asyncio.run(asyncio.wait_for(fetch((host, int(port)), "127.0.0.1", files_port, "/big"), 180))
        assert hashlib.sha256(body).digest() == hashlib.sha256(PAYLOAD).digest()
        exit_metrics = processes[-2].scrape()
        assert exit_metrics("zmesh_node_events_total", event="multipath_sets") >= 1
        assert exit_metrics("zmesh_node_events_total", event="multipath_legs_joined") >= 1
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()
