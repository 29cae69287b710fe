"""Directory authorities end to end (docs/directory.md): three real `zmesh authority` processes,
five relays publishing to all of them, a sixth publishing to one, a seventh that cannot be reached,
and SOCKS clients that take relays only from the signed consensus."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from zmesh.consensus import Consensus, accept_consensus, parse_consensus
from zmesh.descriptor import sign_descriptor
from zmesh.hybrid import HybridKey, parse_fingerprint
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.votes import Period, sign_vote

from .private_network import PRIVATE_NETWORK_ENV, free_port, relay_listen
from .test_native_mesh import ZMESH, Process, _http_server, fetch

INTERVAL = 3
DECLARED = 1_000_000_000  # the relay that claims 1 GB/s
ENV = {"ZMESH_TRANSPORT_KIND": "websocket"}


def fingerprint(data_dir: Path) -> str:
    out = subprocess.run([*ZMESH, "authority", "--data-dir", str(data_dir), "--fingerprint"], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except (urllib.error.URLError, OSError):
        return None


def accepted(url: str, fingerprints: list[str], now: float | None = None) -> Consensus | None:
    """The consensus ``url`` serves if a client configured with ``fingerprints`` accepts it."""
    raw = get(url + "/v1/consensus")
    if raw is None:
        return None
    return asyncio.run(accept_consensus(NativeCryptoProvider(), raw, authorities=[parse_fingerprint(f) for f in
                                                                                  fingerprints],
                                        now=time.time() if now is None else now))


def poll(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll an endpoint-backed ``condition`` until it returns something truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - a consensus not acceptable yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout} s: {what}")


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    root = tmp_path_factory.mktemp("authorities")
    files, files_port = _http_server()
    dirs = [root / f"a{i}" for i in range(3)]
    fps = [fingerprint(d) for d in dirs]
    ports = [free_port() for _ in dirs]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    refs = [f"{u}#{f}" for u, f in zip(urls, fps, strict=True)]
    flags = [a for ref in refs for a in ("--authority", ref)]
    processes: list[Process] = []
    try:
        authorities = []
        for i, d in enumerate(dirs):
            others = [a for j, ref in enumerate(refs) if j != i for a in ("--authority", ref)]
            authorities.append(Process("authority", "--listen", f"127.0.0.1:{ports[i]}", "--data-dir", str(d),
                                       "--vote-interval", str(INTERVAL), *others, env=ENV))
        processes += authorities
        assert [a.address for a in authorities] == [[u, f] for u, f in zip(urls, fps, strict=True)]
        relays = []
        for index in range(5):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{files_port}"] if index >= 3 else []
            env = {**ENV, "ZMESH_RELAY_BANDWIDTH": str(DECLARED)} if index == 0 else ENV
            relays.append(Process("relay", "--listen", relay_listen(index + 1), "--data-dir", str(root / f"r{index}"),
                                  *flags, *extra, env=env))
        lone = Process("relay", "--listen", relay_listen(6), "--data-dir", str(root / "r6"), "--authority", refs[0],
                       "--exit", "--exit-allow", f"127.0.0.1/32:{files_port}", env=ENV)
        dead_port = free_port("127.7.0.1")  # nothing listens there: its reachability test fails
        unreachable = Process("relay", "--listen", relay_listen(7), "--data-dir", str(root / "r7"), *flags,
                              "--advertise", f"ws://127.7.0.1:{dead_port}/v1/link", env=ENV)
        processes += [*relays, lone, unreachable]
        ids = {PeerId.from_text(r.address[1]) for r in relays}

        def full() -> Consensus | None:
            consensus = accepted(urls[0], fps)
            if consensus is None or len(consensus.signatures) < 3 or {e.peer_id for e in consensus.relays} != ids:
                return None
            return consensus if all("Guard" in e.flags for e in consensus.relays) else None

        consensus = poll(full, 60, "a consensus of the five relays, all Guards, signed by all three")
        client = Process("client", "--socks", "127.0.0.1:0", "--control", "127.0.0.1:0", "--data-dir",
                         str(root / "client"), *flags, env=ENV)
        processes.append(client)
        host, port = client.address[0].rsplit(":", 1)
        yield {"urls": urls, "fps": fps, "refs": refs, "flags": flags, "authorities": authorities, "relays": relays,
               "ids": ids, "lone": PeerId.from_text(lone.address[1]),
               "unreachable": PeerId.from_text(unreachable.address[1]), "consensus": consensus,
               "socks": (host, int(port)), "control": client.next_ready("control")[0], "files_port": files_port,
               "root": root}
    finally:
        for process in reversed(processes):
            process.stop()
        files.shutdown()


def circuits(control: str) -> list[dict]:
    with urllib.request.urlopen(f"http://{control}/v1/circuits", timeout=5) as response:
        return json.loads(response.read())["circuits"]


def test_circuits_only_through_consensus_relays(directory):
    consensus = directory["consensus"]
    listed = {e.peer_id for e in consensus.relays}
    assert directory["lone"] not in listed and directory["unreachable"] not in listed
    for n in range(6):
        body = asyncio.run(asyncio.wait_for(fetch(directory["socks"], "127.0.0.1", directory["files_port"], "/",
                                                  username=f"user{n}"), 60))
        assert body == b"small page"
    paths = [c["path"] for c in circuits(directory["control"])]
    assert len(paths) >= 6
    used = {PeerId.from_text(text) for path in paths for text in path}
    assert used <= directory["ids"] and directory["lone"] not in used


def test_declared_bandwidth_is_capped_by_the_measurement(directory):
    claimed = PeerId.from_text(directory["relays"][0].address[1])
    entry = directory["consensus"].entry(claimed)
    assert entry is not None and 0 < entry.bandwidth < DECLARED


def test_two_wrong_fingerprints_refused_naming_the_missing(directory, tmp_path):
    wrong = [fingerprint(tmp_path / "w1"), fingerprint(tmp_path / "w2")]
    refs = [directory["refs"][0], f"{directory['urls'][1]}#{wrong[0]}", f"{directory['urls'][2]}#{wrong[1]}"]
    out = subprocess.run([*ZMESH, "client", "--socks", "127.0.0.1:0", *[a for r in refs for a in ("--authority", r)]],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, PRIVATE_NETWORK_ENV: "true", **ENV})
    assert out.returncode == 1 and "zmesh-ready" not in out.stdout
    assert "valid signatures from 1 of the 3" in out.stderr
    assert wrong[0] in out.stderr and wrong[1] in out.stderr and directory["fps"][0] not in out.stderr.split(
        "missing:")[-1]


def test_cached_consensus_used_after_restart(directory, tmp_path):
    """A client restarted while no authority answers starts from the consensus it saved."""
    cache = directory["root"] / "client" / "consensus.cache"
    assert cache.exists()
    data_dir = tmp_path / "client"
    data_dir.mkdir(mode=0o700)
    (data_dir / "consensus.cache").write_bytes(cache.read_bytes())
    dead = [f"http://127.0.0.1:{free_port()}#{fp}" for fp in directory["fps"]]
    client = Process("client", "--socks", "127.0.0.1:0", "--data-dir", str(data_dir),
                     *[a for r in dead for a in ("--authority", r)], env=ENV)
    try:
        host, port = client.address[0].rsplit(":", 1)
        body = asyncio.run(asyncio.wait_for(fetch((host, int(port)), "127.0.0.1", directory["files_port"], "/",
                                                  username="cached"), 60))
        assert body == b"small page"
    finally:
        client.stop()


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_malformed_or_foreign_votes_are_refused(directory):
    """A peer's bad vote is refused with a typed reason and the authority keeps producing consensuses."""
    url = directory["urls"][1]
    stranger = asyncio.run(HybridKey.generate(NativeCryptoProvider()))
    foreign = asyncio.run(sign_vote(NativeCryptoProvider(), stranger, Period.at(time.time(), INTERVAL), []))
    for body, reason in ((b"\x00garbage", "not valid msgpack"), (foreign.raw, "not configured"),
                         (b"\x92" + b"\xc4\x01x" * 2, "")):
        status, answer = post(url + "/v1/vote", body)
        assert status == 400 and json.loads(answer)["error"] == "bad_vote" and reason in answer
    status, answer = post(url + "/v1/descriptor", b"\x00garbage")
    assert status == 400 and json.loads(answer)["error"] == "bad_descriptor"
    provider = NativeCryptoProvider()
    plain = asyncio.run(sign_descriptor(provider, asyncio.run(Identity.generate(provider)), now=int(time.time()),
                                        addresses={"ws": ("ws://127.9.0.1:1/v1/link",)}))
    status, answer = post(url + "/v1/descriptor", plain.raw)  # Ed25519 only: not the hybrid form
    assert status == 400 and "ML-DSA-65" in answer
    after = math.ceil(time.time())
    poll(lambda: (c := accepted(url, directory["fps"])) and c.period.valid_after >= after, 20,
         "a consensus computed after the bad votes")


def test_one_authority_down_consensus_still_signed_and_used(directory):
    """Runs last in this module: it kills an authority."""
    directory["authorities"][2].stop()
    killed = math.ceil(time.time())  # a period starting from here was voted on without it

    def fresh() -> Consensus | None:
        consensus = accepted(directory["urls"][0], directory["fps"])
        if consensus is None or consensus.period.valid_after < killed:
            return None
        raw = parse_consensus(get(directory["urls"][0] + "/v1/consensus"))
        return consensus if set(raw.signatures) == {parse_fingerprint(f) for f in directory["fps"][:2]} else None

    consensus = poll(fresh, 40, "a fresh consensus signed by the two remaining authorities")
    assert {e.peer_id for e in consensus.relays} == directory["ids"]
    body = asyncio.run(asyncio.wait_for(fetch(directory["socks"], "127.0.0.1", directory["files_port"], "/",
                                              username="after-kill"), 60))
    assert body == b"small page"


def test_demo_runs_three_authorities():
    """`zmesh demo` (what `make demo` runs): its client takes the relays from three authorities' consensus."""
    demo = Process("demo", "--relays", "3")
    try:
        socks, _signal, site = demo.address
        host, port = socks.rsplit(":", 1)
        site_host, site_port = site.removeprefix("http://").rstrip("/").rsplit(":", 1)
        body = asyncio.run(asyncio.wait_for(fetch((host, int(port)), site_host, int(site_port), "/"), 60))
        assert b"Hello through the mesh" in body
    finally:
        assert demo.stop() == 0
