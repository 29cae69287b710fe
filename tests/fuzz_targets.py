"""Fuzz targets: one per decoder of untrusted input (peer, server, file or config bytes).

Each target takes bytes and either returns (the input was accepted) or raises a ``ZmeshError``
(it was refused). Anything else escaping is a bug. ``tests/test_fuzz_decoders.py`` drives these
with hypothesis, ``bench/fuzz.py`` with many random mutations of each target's valid samples; both
import them from here so the two can never disagree on what a target does.

Text decoders get their input as UTF-8 with ``surrogateescape``, so every byte string is some
``str`` (including lone surrogates and non-ASCII letters whose case mapping changes length).
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from zmesh import cells, handshake, padnego, streamflow, streams
from zmesh.aio import http
from zmesh.aio.rtc import _decode as decode_rtc_signal
from zmesh.browser import x509
from zmesh.cells import CellCommand, RelayCommand
from zmesh.descriptor import DOMAIN, Capabilities, sign_descriptor, verify_descriptor
from zmesh.encoding import pack_canonical, unpack_canonical
from zmesh.errors import ProtocolError, ZmeshError
from zmesh.fec.tetrys import TetrysDecoder, TetrysEncoder
from zmesh.identity import Identity, PeerId
from zmesh.native.crypto import NativeCryptoProvider
from zmesh.netaddr import LinkAddress
from zmesh.node import Node
from zmesh.onion import blinding, introduce, wire
from zmesh.onion import descriptor as onion_descriptor
from zmesh.onion.address import decode_address, encode_address
from zmesh.onionkeys import OnionKeySet
from zmesh.padding import Machine, PaddingSpec
from zmesh.signaling import parse_server_message
from zmesh_relay import config, socks5
from zmesh_relay.keys import (
    KEY_FILE,
    ONION_FILE,
    SERVICE_KEY_FILE,
    load_or_create_identity,
    load_or_create_onion_ring,
    load_or_create_service_key,
)
from zmesh_signal import ws

NOW = 1_800_000_000
_RAM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None  # key and config files are rewritten per input


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never really suspends (the native provider's are all like that)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a fuzz target awaited real I/O")


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Target:
    """``run`` decodes one input; ``samples`` are valid inputs to mutate; ``is_text`` says the
    decoder reads text (hypothesis then also generates ``st.text()``)."""

    name: str
    run: Callable[[bytes], object]
    samples: tuple[bytes, ...]
    is_text: bool = False


class _World:
    """Keys, a descriptor and handshake state the targets decode against (built once)."""

    def __init__(self) -> None:
        self.provider = NativeCryptoProvider()
        self.identity: Identity = run_sync(Identity.generate(self.provider))
        self.descriptor = run_sync(sign_descriptor(
            self.provider, self.identity, now=NOW, addresses={"ws": ("ws://relay.example:9001/v1/link",)},
            capabilities=Capabilities(exit=True, country="DE", bandwidth=1000), exit_ports=((80, 443),)))
        self.client = run_sync(handshake.client_start(self.provider, self.identity.peer_id,
                                                      self.identity.onion_keys))
        self.created, _ = run_sync(handshake.server_respond(self.provider, self.identity,
                                                            self.client.create_payload()))
        self.service_seed, service_public = run_sync(self.provider.ed25519_generate())
        self.service_address = encode_address(service_public)
        self.onion = run_sync(onion_descriptor.seal_descriptor(
            self.provider, self.service_seed, onion_descriptor.ServiceDescriptor(
                (onion_descriptor.IntroPoint(self.identity.peer_id.text, bytes(32)),),
                self.identity.onion_keys.x25519, self.identity.onion_keys.mlkem768), now=NOW, revision=1))
        self.key_dir = Path(tempfile.mkdtemp(prefix="zmesh-fuzz-", dir=_RAM_DIR))
        atexit.register(shutil.rmtree, self.key_dir, ignore_errors=True)
        self.config_file = self.key_dir / "zmesh.toml"


@functools.cache
def world() -> _World:
    return _World()


# --- the targets --------------------------------------------------------------------------------

def _node_frame(data: bytes) -> object:
    """A fresh relay's first frame from an inbound link (cut to whole cells: ``parse_frame`` has
    its own target). The node must turn anything it dislikes into a closed link or circuit."""
    w = world()
    node = Node(w.identity, w.provider, lambda: 0.0)
    link = run_sync(node.link_opened(None, initiator=False))
    run_sync(node.receive_frame(link, data[:len(data) - len(data) % cells.CELL_SIZE] or data))
    return node.events()


def _canonical(data: bytes) -> object:
    return unpack_canonical(data, max_size=8192, what="fuzz input")


def _descriptor(data: bytes) -> object:
    return run_sync(verify_descriptor(world().provider, data, now=NOW + 60))


def _descriptor_body(data: bytes) -> object:
    """Sign whatever body we are given, so the fuzzer reaches the parser behind the signature."""
    w = world()
    signature = run_sync(w.provider.ed25519_sign(w.identity.signing_key, DOMAIN + data))
    return run_sync(verify_descriptor(w.provider, pack_canonical([data, signature]), now=NOW + 60))


def _peer_id(data: bytes) -> object:
    return PeerId.from_text(text(data))


def _create(data: bytes) -> object:
    return run_sync(handshake.server_respond(world().provider, world().identity, data))


def _created(data: bytes) -> object:
    return run_sync(handshake.client_finish(world().provider, world().client, data))


def _signal_client(data: bytes) -> object:
    return parse_server_message(text(data))


def _signal_server(data: bytes) -> object:
    message = ws.parse_message(text(data))
    return ws.send_fields(message) if message["type"] == "send" else ws.auth_fields(message)


def _saved(name: str, data: bytes) -> Path:
    """The key folder with ``data`` as its file ``name`` (0600, so it is read, not refused)."""
    folder = world().key_dir
    (folder / name).write_bytes(data)
    os.chmod(folder / name, 0o600)
    return folder


def _key_file(data: bytes) -> object:
    return run_sync(load_or_create_identity(world().provider, _saved(KEY_FILE, data)))


def _onion_state(data: bytes) -> object:
    return run_sync(load_or_create_onion_ring(world().provider, _saved(ONION_FILE, data), lambda: NOW,
                                              lifetime=86400, grace=3600))


def _service_key(data: bytes) -> object:
    return run_sync(load_or_create_service_key(world().provider, _saved(SERVICE_KEY_FILE, data)))


def _onion_check(data: bytes) -> object:
    return run_sync(onion_descriptor.check_sealed(world().provider, data, now=NOW + 60))


def _onion_open(data: bytes) -> object:
    w = world()
    return run_sync(onion_descriptor.open_descriptor(w.provider, w.service_address, data, now=NOW + 60))


def _onion_body(data: bytes) -> object:
    """Sign whatever body we are given with the service's blinded key, so the fuzzer reaches the
    parser behind the signature."""
    w = world()
    period = blinding.time_period(NOW, blinding.DEFAULT_PERIOD)
    signature = blinding.blinded_sign(w.service_seed, period, blinding.DEFAULT_PERIOD, onion_descriptor.DOMAIN + data)
    return _onion_open(pack_canonical([data, signature]))


def _onion_address(data: bytes) -> object:
    return decode_address(text(data))


def _config(data: bytes) -> object:
    w = world()
    w.config_file.write_bytes(data)
    return config.load(w.config_file, env={})


def _fec_decoder(data: bytes) -> object:
    return TetrysDecoder(symbol_size=64, max_window=16).receive(data, 0.0)


def _fec_ack(data: bytes) -> object:
    encoder = TetrysEncoder(symbol_size=64, max_window=16, rng=random.Random(1))
    for i in range(4):
        encoder.source(bytes([i]) * 10)
    return encoder.on_ack(data)


def _link_address(data: bytes) -> object:
    return LinkAddress.parse(text(data))


def _socks_domain(data: bytes) -> object:
    """The SOCKS front's hostname decoder (a CONNECT's domain bytes); its refusal is a SOCKS reply
    (``_Refused``), which is what the front sends back, so it counts as our error."""
    try:
        return socks5._domain(data)
    except socks5._Refused as refused:
        raise ProtocolError(f"SOCKS reply {refused.reply}") from None


def _certificate(data: bytes) -> object:
    """The tab's X.509 parser, and tlslite-ng's key parser behind ``public_key`` (the issuer side)."""
    return x509.parse_certificate(data).public_key()


def _pem(data: bytes) -> object:
    return x509.certificates_from_pem(text(data))


@functools.cache
def _certificates() -> tuple[bytes, ...]:
    """A server certificate of each key kind (EC, RSA, Ed25519), as DER."""
    from tests.https_support import CA, issue

    return tuple(issue("server", CA, ips=("127.0.0.1",), dns=("a.example",), kind=kind).der
                 for kind in ("ec", "rsa", "ed25519"))


def _as_pem(der: bytes) -> bytes:
    return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"


def _url(data: bytes) -> object:
    return http.parse_url(text(data))


_ONION_WIRE = (wire.parse_establish_intro, wire.parse_introduce, wire.parse_cookie, wire.parse_rendezvous1,
               wire.parse_introduce_ack)


def _onion_wire(data: bytes) -> object:
    """The onion-service relay messages' decoders, the first byte choosing which."""
    if not data:
        raise ProtocolError("empty")
    return _ONION_WIRE[data[0] % len(_ONION_WIRE)](data[1:])


def _introduction(data: bytes) -> object:
    w = world()
    return run_sync(introduce.open_introduction(w.provider, w.identity.peer_id.key, OnionKeySet.of(w.identity),
                                                bytes(32), data))


def _samples_introduction() -> tuple[bytes, ...]:
    w = world()
    point = introduce.RendezvousPoint(w.identity.peer_id, w.identity.onion_keys.x25519, bytes(range(20)))
    sealed, _ = run_sync(introduce.seal_introduction(w.provider, w.identity.peer_id.key, w.identity.onion_keys,
                                                     bytes(32), point))
    return (sealed,)


def _samples_descriptor() -> tuple[bytes, ...]:
    return (world().descriptor.raw,)


def _samples_body() -> tuple[bytes, ...]:
    body = msgpack.unpackb(world().descriptor.raw, raw=False)[0]
    return (body,)


def _signal_json(*messages: dict[str, Any]) -> tuple[bytes, ...]:
    return tuple(json.dumps(m).encode() for m in messages)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _multipath(data: bytes) -> None:
    """A leg's bytes (zmesh.multipath.wire): every message decoded and applied as a receiver would."""
    from zmesh.multipath import MessageReader, MultipathCommand, Reorder, SendBuffer
    from zmesh.multipath.wire import parse_link, parse_linked, parse_seq

    reorder, send = Reorder(window=8), SendBuffer(window=8)
    send.assign(b"x")
    for command, body in MessageReader().feed(data):
        if command is MultipathCommand.LINK:
            parse_link(body)
        elif command is MultipathCommand.LINKED:
            parse_linked(body)
        elif command is MultipathCommand.DATA:
            reorder.push(*parse_seq(body, data=True))
        elif command is MultipathCommand.FIN:
            reorder.push(parse_seq(body)[0], None)
        else:
            send.on_ack(parse_seq(body)[0])


def _multipath_samples() -> tuple[bytes, ...]:
    from zmesh.multipath.wire import MultipathCommand, encode_link, encode_linked, encode_seq

    nonce = bytes(range(32))
    return (encode_link(nonce, 0, "example.com", 443) + encode_seq(MultipathCommand.DATA, 0, b"hi")
            + encode_seq(MultipathCommand.ACK, 1) + encode_seq(MultipathCommand.FIN, 1),
            encode_link(nonce, 1) + encode_linked(1))


def targets() -> list[Target]:
    """Every target, with its samples (built on first use: they need keys)."""
    w = world()
    peer = w.identity.peer_id.text
    sig = _b64(bytes(64))
    relay_cell = cells.encode_cell(CellCommand.RELAY, 7, bytes(cells.encode_relay_body(RelayCommand.DATA, 1, b"x")))
    fec_encoder = TetrysEncoder(symbol_size=64, max_window=16, rng=random.Random(1))
    fec_source = fec_encoder.source(b"hello")
    fec_repair = fec_encoder.repair()
    fec_receiver = TetrysDecoder(symbol_size=64, max_window=16)
    fec_receiver.receive(fec_source, 0.0)
    return [
        Target("cells.parse_frame", cells.parse_frame, (
            relay_cell, cells.encode_cell(CellCommand.CREATE, 9, b"\x01" * 100, cells.FLAG_MORE),
            cells.encode_cell(CellCommand.PING, 0, b"ping") + relay_cell)),
        Target("node.receive_frame (relay)", _node_frame, (
            b"".join(cells.encode_cell(CellCommand.CREATE, 5, piece, flags)
                     for piece, flags in cells.fragments(w.client.create_payload(), cells.BODY_SIZE)),
            cells.encode_cell(CellCommand.PING, 0, b"12345678") + cells.encode_cell(CellCommand.DESTROY, 5, b"\x01"),
            cells.encode_cell(CellCommand.AUTHENTICATE, 0, bytes(96)) + relay_cell)),
        Target("cells.parse_relay_body", cells.parse_relay_body, (
            bytes(cells.encode_relay_body(RelayCommand.BEGIN, 3, b"example.com:443")),
            bytes(cells.encode_relay_body(RelayCommand.EXTEND, 0, bytes(300), cells.FLAG_MORE)))),
        Target("streamflow.parse_xon", streamflow.parse_xon, (streamflow.encode_xon(0), streamflow.encode_xon(5e6))),
        Target("streams.parse_target", streams.parse_target,
               (b"example.com:443", b"[2001:db8::1]:80", b":7", b"1.2.3.4:1")),
        Target("encoding.unpack_canonical", _canonical, (
            pack_canonical({"a": [1, b"x", "y"], "b": {"c": True}}), w.descriptor.raw)),
        Target("descriptor.verify", _descriptor, _samples_descriptor()),
        Target("descriptor.body (signed)", _descriptor_body, _samples_body()),
        Target("identity.PeerId.from_text", _peer_id, (peer.encode(), (peer + ".mesh").encode()), is_text=True),
        Target("handshake.CREATE", _create, (w.client.create_payload(),)),
        Target("handshake.CREATED", _created, (w.created,)),
        Target("signaling.parse_server_message", _signal_client, _signal_json(
            {"type": "challenge", "nonce": _b64(bytes(32))}, {"type": "ready", "peer_id": peer},
            {"type": "error", "error": "offline", "detail": "gone", "to": peer},
            {"type": "message", "from": peer, "payload": _b64(b"hi"), "signature": sig}), is_text=True),
        Target("zmesh_signal.ws messages", _signal_server, _signal_json(
            {"type": "auth", "peer_id": peer, "signature": sig},
            {"type": "send", "to": peer, "payload": _b64(b"hi"), "signature": sig}), is_text=True),
        Target("rtc signaling payload", decode_rtc_signal, _signal_json(
            {"kind": "offer", "id": "a1", "sdp": "v=0\r\n", "channels": [{"label": "zmesh", "ordered": True}]},
            {"kind": "candidate", "id": "a1", "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
             "mid": "0", "mline": 0},
            {"kind": "reject", "id": "a1", "reason": "busy"})),
        Target("keys.identity file", _key_file, (w.identity.to_bytes(),)),
        Target("keys.onion key state", _onion_state, (pack_canonical({
            "v": 1, "current": {"x25519": bytes(range(32)), "mlkem768_seed": bytes(64), "at": float(NOW)},
            "retired": [{"x25519": bytes(32), "mlkem768_seed": bytes(range(64)), "at": NOW - 10.0}]}),)),
        Target("keys.service key file", _service_key, (pack_canonical({"v": 1, "seed": bytes(32)}),)),
        Target("onion.decode_address", _onion_address, (w.service_address.encode(),), is_text=True),
        Target("onion.check_sealed", _onion_check, (w.onion.blob,)),
        Target("onion.open_descriptor", _onion_open, (w.onion.blob,)),
        Target("onion descriptor body (signed)", _onion_body, (msgpack.unpackb(w.onion.blob)[0],)),
        Target("config.load (TOML)", _config, (
            b'[core]\nhops = 3\n[relay]\ncountry = "DE"\nlisten = "127.0.0.1:0"\nexit = true\n',
            b'[transport]\nice_servers = ["stun:h:3478", {urls = ["turn:h"], username = "u", credential = "p"}]\n'
            b'channels = [{label = "zmesh"}, {label = "fec", ordered = false, max_retransmits = 0}]\n'),
               is_text=True),
        Target("netaddr.LinkAddress.parse", _link_address, (
            b"ws://relay.example:9001/v1/link", b"wss://[2001:db8::1]/v1/link", b"ws://203.0.113.7:80"), is_text=True),
        Target("socks5 CONNECT hostname", _socks_domain, (b"example.com", "bücher.de".encode(), b"1.2.3.4")),
        Target("x509.parse_certificate", _certificate, _certificates()),
        Target("x509.certificates_from_pem", _pem, tuple(map(_as_pem, _certificates())), is_text=True),
        Target("http.parse_url", _url, (b"http://example.com:8080/a?b=c", b"http://[2001:db8::1]/"), is_text=True),
        Target("http.parse_response", http.parse_response, (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",)),
        Target("fec.TetrysDecoder.receive", _fec_decoder, (fec_source, fec_repair)),
        Target("fec.TetrysEncoder.on_ack", _fec_ack, (fec_receiver.ack(),)),
        Target("onion relay messages", _onion_wire, (b"\x00" + bytes(96), b"\x01" + bytes(1317), b"\x02" + bytes(20),
                                                     b"\x03" + bytes(84), b"\x04\x03")),
        Target("onion introduction (service)", _introduction, _samples_introduction()),
        Target("padnego.decode_request", padnego.decode_request, (
            padnego.encode_request(PaddingSpec(Machine.CONSTANT, rate=50.0)),
            padnego.encode_request(PaddingSpec(Machine.KEEPALIVE, idle=9.5)))),
        Target("multipath leg messages", _multipath, _multipath_samples()),
        Target("votes.verify_vote", _vote, (_directory().vote,)),
        Target("consensus.accept_consensus", _consensus, (_directory().consensus,)),
    ]


# --- mutation (bench/fuzz.py; hypothesis uses it too, with its own Random) ----------------------

_INTERESTING = (b"\x00", b"\xff", b"\n", b"=", b"\xc3\x9f", b"\xc4\xb0", b"\xef\xbf\xbd", b"\xed\xa0\x80", b'"',
                b"\\u0000", b"[", b"{", b"]", b"}", b":", b"-1", b"1e999", b"9" * 30, b"\x80", b"\xc1", b"\xde\xad")


def mutate(sample: bytes, rng: random.Random) -> bytes:
    """A few random edits of ``sample``: flips, inserts, deletes, truncation, splices."""
    data = bytearray(sample)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[pos % len(data)] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[pos % len(data)] = rng.randrange(256)
        elif op == 2:
            data[pos:pos] = rng.choice(_INTERESTING)
        elif op == 3:
            del data[pos:pos + rng.randint(1, 16)]
        elif op == 4:
            del data[pos:]
        elif op == 5:
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:
            start = rng.randrange(len(data) + 1)
            data[pos:pos] = data[start:start + rng.randint(1, 64)]
    return bytes(data)


def outcome(target: Target, data: bytes) -> str | Exception:
    """Run one input: ``"accepted"``, ``"refused"`` (a ``ZmeshError``), or the foreign exception."""
    try:
        target.run(data)
    except ZmeshError:
        return "refused"
    except Exception as exc:  # noqa: BLE001 - reporting exactly these is the point
        return exc
    return "accepted"


# --- directory votes and consensus (docs/directory.md) -------------------------------------------

@dataclass(frozen=True)
class _Directory:
    authorities: frozenset[bytes]
    vote: bytes
    consensus: bytes


@functools.cache
def _directory() -> _Directory:
    """Two authorities' keys, a vote of one and a consensus both signed (built once: ML-DSA keys)."""
    from zmesh.consensus import compute_consensus, parse_consensus_body, sign_consensus
    from zmesh.hybrid import HybridKey
    from zmesh.votes import Period, RelayEntry, sign_vote

    provider = world().provider
    keys = [run_sync(HybridKey.generate(provider)) for _ in range(2)]
    fps = [k.public.fingerprint for k in keys]
    period = Period.at(NOW, 60)
    relays = [RelayEntry(world().identity.peer_id, bytes(32), 1000, frozenset({"Fast", "Guard"}))]
    votes = [run_sync(sign_vote(provider, k, period, relays)) for k in keys]
    consensus = parse_consensus_body(compute_consensus(votes, fps))
    for key in keys:
        consensus = run_sync(sign_consensus(provider, key, consensus))
    return _Directory(frozenset(fps), votes[0].raw, consensus.to_bytes())


def _vote(data: bytes) -> object:
    from zmesh.votes import verify_vote
    return run_sync(verify_vote(world().provider, data, authorities=_directory().authorities))


def _consensus(data: bytes) -> object:
    from zmesh.consensus import accept_consensus
    return run_sync(accept_consensus(world().provider, data, authorities=sorted(_directory().authorities),
                                     now=NOW + 1))
