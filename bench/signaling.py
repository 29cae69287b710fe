"""Signal server benchmark: WebSocket peers held and signed messages relayed per second, with
p50/p99 latency, for one server in memory and for two servers on one Redis, in the same run.

Each server runs in its own process (``--serve``, limits raised so that one load generator on
loopback is not rate limited); a real ``redis-server`` (no persistence) backs the second case.
The load generator (this process) signs in ``--peers`` peers, spread over the servers, then for
``--seconds`` keeps ``--pairs`` sender→recipient pairs sending one signed message each, the next
as soon as the previous arrived (closed loop); with two servers every pair crosses servers.
Latency is from just before signing to arrival. The generator is one Python process on the same
cores, so the figures are a floor of what the servers can do.
Run: ``python bench/signaling.py [--peers 10000] [--json]`` (well under two minutes).
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder comes first on the path, and its name would hide the
# standard library's ``signal`` from asyncio: take the folder off before importing anything.
sys.path[:] = [p for p in sys.path if p != __file__.rpartition("/")[0]]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

import aiohttp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "node-core"), str(ROOT / "relay"), str(ROOT / "signaling"), str(ROOT)]

from bench.figures import add_json_flag, print_json  # noqa: E402
from tests.signal_backends import redis_server  # noqa: E402
from zmesh.identity import Identity  # noqa: E402
from zmesh.native.crypto import NativeCryptoProvider  # noqa: E402
from zmesh.signaling import auth_transcript, message_transcript  # noqa: E402

PROVIDER = NativeCryptoProvider()


async def serve(redis: str | None) -> None:
    """One server with the load generator's limits raised; prints its port."""
    from zmesh_signal.app import SignalConfig, serving
    from zmesh_signal.ws import WsLimits

    config = SignalConfig(redis=redis, get_rate=1e9, get_burst=1e9, post_rate=1e9, post_burst=1e9,
                          ws=WsLimits(rate=1e9, burst=1e9, outbox=1024))
    async with serving(config, "127.0.0.1", 0) as port:
        print(port, flush=True)
        await asyncio.Event().wait()


def start_server(redis: str | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[:4])}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", *(["--redis", redis] if redis else [])],
                            stdout=subprocess.PIPE, text=True, env=env)
    proc.port = int(proc.stdout.readline())  # type: ignore[attr-defined]
    return proc


async def sign_in(session: aiohttp.ClientSession, url: str, identity: Identity) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(url, heartbeat=None, max_msg_size=0)
    nonce = base64.b64decode((await ws.receive_json())["nonce"])
    signature = await PROVIDER.ed25519_sign(identity.signing_key, auth_transcript(nonce))
    await ws.send_json({"type": "auth", "peer_id": identity.peer_id.text,
                        "signature": base64.b64encode(signature).decode()})
    assert (await ws.receive_json())["type"] == "ready"
    return ws


async def run_case(urls: list[str], peers: int, pairs: int, seconds: float) -> dict:
    identities = [await Identity.generate(PROVIDER) for _ in range(peers)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        for batch in range(0, peers, 200):  # 200 sign-ins in flight at a time
            sockets += await asyncio.gather(*(sign_in(session, f"{urls[i % len(urls)]}/v1/ws", identities[i])
                                              for i in range(batch, min(peers, batch + 200))))
        connect_time = time.perf_counter() - started
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def pair(index: int) -> None:
            # sender 2i on server (2i mod n), recipient 2i+1 on server (2i+1 mod n): across when n = 2
            sender, recipient = identities[2 * index], identities[2 * index + 1]
            out, inbox = sockets[2 * index], sockets[2 * index + 1]
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                payload = b"x" * 200
                signature = await PROVIDER.ed25519_sign(
                    sender.signing_key, message_transcript(sender.peer_id, recipient.peer_id, payload))
                await out.send_str(json.dumps({"type": "send", "to": recipient.peer_id.text,
                                               "payload": base64.b64encode(payload).decode(),
                                               "signature": base64.b64encode(signature).decode()}))
                message = await inbox.receive_json(timeout=10)
                assert message["type"] == "message", message
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(pair(i) for i in range(pairs)))
        held = sum(not ws.closed for ws in sockets)
        for ws in sockets:
            await ws.close()
    latencies.sort()
    return {"servers": len(urls), "peers_held": held, "connect_s": round(connect_time, 2),
            "messages_per_s": round(len(latencies) / seconds), "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)}


async def bench(peers: int, pairs: int, seconds: float) -> list[dict]:
    rows = []
    with ExitStack() as stack:
        memory = start_server(None)
        stack.callback(memory.kill)
        rows.append({"backend": "memory", **await run_case([f"http://127.0.0.1:{memory.port}"], peers, pairs, seconds)})
        memory.kill()
        url = stack.enter_context(redis_server())
        servers = [start_server(url) for _ in range(2)]
        for server in servers:
            stack.callback(server.kill)
        rows.append({"backend": "redis", **await run_case([f"http://127.0.0.1:{s.port}" for s in servers],
                                                          peers, pairs, seconds)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=2000, help="WebSocket peers held (default 2000)")
    parser.add_argument("--pairs", type=int, default=50, help="sender/recipient pairs sending (default 50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="sending time per case (default 5)")
    add_json_flag(parser)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve:
        asyncio.run(serve(args.redis))
        return
    if args.peers < 2 * args.pairs or args.peers + 100 > hard:
        parser.error(f"need 2 x pairs <= peers <= open-file limit - 100 ({hard - 100})")
    rows = asyncio.run(bench(args.peers, args.pairs, args.seconds))
    print(f"{'backend':8} {'servers':>7} {'peers held':>10} {'sign-in s':>9} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for row in rows:
        print(f"{row['backend']:8} {row['servers']:>7} {row['peers_held']:>10} {row['connect_s']:>9} "
              f"{row['messages_per_s']:>7} {row['p50_ms']:>7} {row['p99_ms']:>7}")
    base = rows[0]["messages_per_s"]
    ratio = rows[1]["messages_per_s"] / base
    print(f"two servers on Redis / one in memory: {ratio:.2f}x messages per second")
    print_json(args, {"rows": rows, "redis_two_servers_over_memory": round(ratio, 3)})


if __name__ == "__main__":
    main()
