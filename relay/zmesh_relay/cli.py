"""The ``zmesh`` command: ``signal``, ``relay``, ``client``, ``service``, ``authority``, ``demo``, ``status``
and ``config --check``.

Each long-running command prints one line ``zmesh-ready <what> <address>`` on stdout once it is
serving (scripts and tests wait for it), logs to stderr, and stops cleanly on SIGINT/SIGTERM. A
client with a control port prints a second line, ``zmesh-ready control HOST:PORT``, after its
``socks`` line; a relay or client given ``--metrics`` prints ``zmesh-ready metrics HOST:PORT`` last.
``service`` prints ``zmesh-ready service <address>.mesh`` once its descriptor is published (then
``control`` with ``--control``). ``status`` prints a client's control port (``docs/control.md``) as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zmesh.errors import ConfigError, TransportError, ZmeshError

from . import config as settings

if TYPE_CHECKING:
    from .metrics import MetricsListener, Observed

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"


def ready(what: str, address: str) -> None:
    print(f"zmesh-ready {what} {address}", flush=True)


async def run_until_signalled(start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await start()
        await stopping.wait()
    finally:
        await stop()


async def cmd_signal(cfg: dict[str, Any]) -> None:
    from zmesh_signal.app import run_server

    host, port = settings.split_host_port(cfg["signaling.listen"])
    web_root = Path(cfg["signaling.web_root"]).expanduser() if cfg["signaling.web_root"] else WEB_ROOT
    server = asyncio.ensure_future(run_server(
        host, port, web_root=web_root, ready=lambda bound: ready("signal", f"http://{host}:{bound}"),
        allow_private_addresses=cfg["network.allow_private_addresses"],
        max_per_source=cfg["signaling.max_relays_per_source"], redis=cfg["signaling.redis"] or None))

    async def stop() -> None:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

    async def start() -> None:
        await asyncio.sleep(0)

    await run_until_signalled(start, stop)


async def serve_metrics(address: tuple[str, int] | None, node: Observed) -> MetricsListener | None:
    """Start the private ``/metrics`` listener of ``node`` (a Relay or a Client) on ``address``
    (``config.metrics_address``; None: off) and announce it; the listener (to close) or None."""
    from .metrics import MetricsListener, registry_for

    if address is None:
        return None
    listener = MetricsListener(registry_for(node))
    ready("metrics", settings.join_host_port(address[0], await listener.start(*address)))
    return listener


async def run_node(cfg: dict[str, Any], node: Any, announce: Callable[[], None]) -> None:
    """Run a relay or a client until SIGINT/SIGTERM: its ready lines, then its metrics line if any."""
    address = settings.metrics_address(cfg)  # refused before anything starts
    metrics: MetricsListener | None = None

    async def start() -> None:
        nonlocal metrics
        await node.start()
        announce()
        metrics = await serve_metrics(address, node)

    async def stop() -> None:
        if metrics is not None:
            await metrics.close()
        await node.stop()

    await run_until_signalled(start, stop)


async def cmd_relay(cfg: dict[str, Any]) -> None:
    from .relay import Relay

    relay = Relay(cfg)
    await run_node(cfg, relay, lambda: ready("relay", f"{relay.link_url} {relay.peer_id.text}"))


async def cmd_client(cfg: dict[str, Any]) -> None:
    from .client import Client

    client = Client(cfg)

    def announce() -> None:
        host, _ = settings.split_host_port(cfg["client.socks"])
        ready("socks", f"{host}:{client.socks_port}")
        if client.control_address is not None:
            ready("control", settings.join_host_port(client.control_address[0], client.control_port))

    await run_node(cfg, client, announce)


async def cmd_service(cfg: dict[str, Any]) -> None:
    from .service import Service

    if not cfg["service.forward"]:
        raise ConfigError("zmesh service needs at least one --forward [VPORT=]HOST:PORT")
    service = Service(cfg)

    def announce() -> None:
        ready("service", service.address)
        if service.control_address is not None:
            ready("control", settings.join_host_port(service.control_address[0], service.control_port))

    await run_node(cfg, service, announce)


async def cmd_status(cfg: dict[str, Any]) -> None:
    import aiohttp

    from .status import circuits_table

    if not cfg["client.control"]:
        raise ConfigError("zmesh status needs --control HOST:PORT (the client's control port)")
    url = f"http://{cfg['client.control']}/v1/circuits"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.get(url) as response:
            response.raise_for_status()
            document = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TransportError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    print(circuits_table(document))


async def cmd_authority(cfg: dict[str, Any], fingerprint_only: bool) -> None:
    from .authority import Authority, print_fingerprint

    if fingerprint_only:
        print(await print_fingerprint(cfg), flush=True)
        return
    authority = Authority(cfg)

    async def start() -> None:
        await authority.start()
        ready("authority", f"{authority.url} {authority.fingerprint}")

    await run_until_signalled(start, authority.stop)


async def cmd_demo(cfg: dict[str, Any], relays: int) -> None:
    from .demo import Demo

    demo = Demo(cfg, relays=relays, web_root=WEB_ROOT)
    await run_until_signalled(demo.start, demo.stop)


def _metrics_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--metrics", dest="metrics.listen", metavar="HOST:PORT",
                         help="serve Prometheus /metrics here (loopback; then prints 'zmesh-ready metrics HOST:PORT' "
                              "after the other ready lines)")
    command.add_argument("--metrics-allow-remote", dest="metrics.allow_remote", action="store_const", const=True,
                         help="allow --metrics on a non-loopback address (its counters are a correlation oracle)")


def _authority_flag(command: argparse.ArgumentParser, what: str = "a directory authority") -> None:
    command.add_argument("--authority", dest="directory.authorities", action="append", metavar="URL#FINGERPRINT",
                         help=f"{what} (repeatable); with any, relays come only from their signed consensus")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="zmesh", description="zmesh onion-routing mesh")
    root.add_argument("--config", help="zmesh.toml (default: $ZMESH_CONFIG)")
    root.add_argument("--log-level", dest="metrics.log_level", help="debug, info, warning or error")
    commands = root.add_subparsers(dest="command", required=True)

    sig = commands.add_parser("signal", help="run the signaling / directory server")
    sig.add_argument("--listen", dest="signaling.listen", metavar="HOST:PORT")
    sig.add_argument("--web-root", dest="signaling.web_root", metavar="DIR")
    sig.add_argument("--max-relays-per-source", dest="signaling.max_relays_per_source", metavar="N", type=int)
    sig.add_argument("--redis", dest="signaling.redis", metavar="redis://HOST:PORT/DB",
                     help="share the directory, rate limits and routes with other servers on this Redis")

    relay = commands.add_parser("relay", help="run a relay (optionally an exit)")
    relay.add_argument("--signal", dest="signaling.url", metavar="URL")
    relay.add_argument("--listen", dest="relay.listen", metavar="HOST:PORT")
    relay.add_argument("--data-dir", dest="relay.data_dir", metavar="DIR")
    relay.add_argument("--advertise", dest="relay.advertise", metavar="URL")
    relay.add_argument("--ws-path", dest="relay.ws_path", metavar="PATH",
                       help="accept and publish links on this path (default /v1/link)")
    relay.add_argument("--tls-cert", dest="relay.tls_cert", metavar="PEM")
    relay.add_argument("--tls-key", dest="relay.tls_key", metavar="PEM")
    relay.add_argument("--exit", dest="relay.exit", action="store_const", const=True)
    relay.add_argument("--exit-allow", dest="security.exit_allow", action="append", metavar="CIDR:PORTS",
                       help="let the exit reach an otherwise refused range, e.g. 127.0.0.1/32:8000-8100")
    relay.add_argument("--exit-policy", dest="exit.policy", action="append", metavar="RULE",
                       help="accept|reject ADDRESS:PORTS before the default policy, first match wins "
                            "(repeatable), e.g. 'accept *:25' or 'reject 10.0.0.0/8:*'; see docs/exits.md")
    relay.add_argument("--exit-upstream", dest="exit.upstream", metavar="URL",
                       help="http://HOST:PORT: reach targets through this HTTP CONNECT proxy (a 'proxy' exit)")
    relay.add_argument("--country", dest="relay.country", metavar="CC",
                       help="two-letter country code to declare (self-declared: nothing checks it yet)")
    relay.add_argument("--family", dest="relay.family", action="append", metavar="PEERID",
                       help="another relay of the same operator (repeatable); honoured when it lists this one too")
    _authority_flag(relay)
    relay.add_argument("--max-links", dest="relay.max_links", type=int, metavar="N")
    relay.add_argument("--max-peers", dest="relay.max_peers", metavar="auto|N")
    relay.add_argument("--max-links-per-address", dest="relay.max_links_per_address", type=int, metavar="N")
    relay.add_argument("--max-circuits", dest="relay.max_circuits", type=int, metavar="N")
    relay.add_argument("--handshake-rate", dest="relay.handshake_rate", type=float, metavar="PER_S")
    relay.add_argument("--onion-key-lifetime", dest="relay.onion_key_lifetime", type=float, metavar="SECONDS")
    relay.add_argument("--onion-key-grace", dest="relay.onion_key_grace", type=float, metavar="SECONDS")
    relay.add_argument("--padding-keepalive", dest="anonymity.keepalive", type=float, metavar="SECONDS")
    relay.add_argument("--jitter", dest="anonymity.jitter", type=float, metavar="SECONDS",
                       help="hold each link's cells up to this long (random per batch), then send them together")
    relay.add_argument("--frame-padding", dest="anonymity.frame_padding", action="store_const", const=True,
                       help="end each link frame with 0..1023 zero bytes (every peer must run this version)")
    relay.add_argument("--padding-max-rate", dest="anonymity.padding_max_rate", type=float, metavar="CELLS_PER_S")
    relay.add_argument("--padding-max-percent", dest="anonymity.padding_max_percent", type=int, metavar="PERCENT")
    _metrics_flags(relay)

    client = commands.add_parser("client", help="run a SOCKS5 client")
    client.add_argument("--signal", dest="signaling.url", metavar="URL")
    client.add_argument("--socks", dest="client.socks", metavar="HOST:PORT")
    client.add_argument("--data-dir", dest="client.data_dir", metavar="DIR")
    client.add_argument("--client-auth-key", dest="client.client_auth_key", metavar="FILE")
    client.add_argument("--hops", dest="core.hops", type=int)
    client.add_argument("--exit-kind", dest="client.exit_kind", choices=("direct", "proxy"),
                        help="use only exits that connect directly, or only upstream-proxy exits (default: any)")
    client.add_argument("--exit-country", dest="client.exit_country", metavar="CC",
                        help="use only exits declaring this two-letter country (self-declared by relays)")
    client.add_argument("--exclude-country", dest="path.exclude_countries", action="append", metavar="CC",
                        help="never use relays that declare this country (repeatable)")
    client.add_argument("--socks-max-connections", dest="socks.max_connections", metavar="N")
    client.add_argument("--socks-handshake-timeout", dest="socks.handshake_timeout", metavar="SECONDS")
    client.add_argument("--socks-half-close-timeout", dest="socks.half_close_timeout", metavar="SECONDS")
    client.add_argument("--max-circuit-dirtiness", dest="client.max_circuit_dirtiness", metavar="SECONDS")
    client.add_argument("--isolate-destination", dest="client.isolate_destination", action="store_const", const=True)
    client.add_argument("--circuit-pool", dest="client.circuit_pool", metavar="N")
    client.add_argument("--cover", dest="anonymity.cover", metavar="off|poisson:RATE|constant:RATE",
                        help="cover traffic on the first link, both ways (docs/anonymity.md)")
    client.add_argument("--padding-keepalive", dest="anonymity.keepalive", type=float, metavar="SECONDS")
    client.add_argument("--frame-padding", dest="anonymity.frame_padding", action="store_const", const=True)
    client.add_argument("--setup-padding", dest="anonymity.setup_padding", type=int, metavar="CELLS",
                        help="pad each new circuit's setup to CELLS cells each way on the first link (0: off)")
    _authority_flag(client)
    client.add_argument("--control", dest="client.control", metavar="HOST:PORT")
    client.add_argument("--control-allow-remote", dest="client.control_allow_remote", action="store_const",
                        const=True)
    client.add_argument("--multipath", dest="client.multipath", action="store_const", const=True,
                        help="split each stream over two circuits that share only the exit")
    _metrics_flags(client)

    service = commands.add_parser("service", help="host an onion service at a .mesh address")
    service.add_argument("--signal", dest="signaling.url", metavar="URL")
    service.add_argument("--data-dir", dest="service.data_dir", metavar="DIR")
    service.add_argument("--forward", dest="service.forward", action="append", metavar="[VPORT=]HOST:PORT",
                         help="streams to virtual port VPORT (default: PORT) go to HOST:PORT (repeatable)")
    service.add_argument("--intro-points", dest="service.intro_points", type=int, metavar="N")
    service.add_argument("--intro-lifetime", dest="service.intro_lifetime", type=float, metavar="SECONDS")
    service.add_argument("--authorized-client", dest="service.authorized_clients", action="append", metavar="KEY")
    service.add_argument("--control", dest="client.control", metavar="HOST:PORT",
                         help="serve the service's intro and rendezvous circuits here (docs/control.md)")

    status = commands.add_parser("status", help="show a running client's circuits (its control port)")
    status.add_argument("--control", dest="client.control", metavar="HOST:PORT")

    authority = commands.add_parser("authority", help="run a directory authority (docs/directory.md)")
    authority.add_argument("--listen", dest="authority.listen", metavar="HOST:PORT")
    authority.add_argument("--data-dir", dest="authority.data_dir", metavar="DIR")
    authority.add_argument("--vote-interval", dest="authority.vote_interval", type=int, metavar="SECONDS")
    authority.add_argument("--fingerprint", action="store_true",
                           help="create the key if needed, print this authority's fingerprint and exit")
    _authority_flag(authority, "the other authorities")

    demo = commands.add_parser("demo", help="run a whole local mesh and a test site")
    demo.add_argument("--relays", type=int, default=4, help="relays in the demo mesh, the last one an exit")

    check = commands.add_parser("config", help="validate a zmesh.toml and print the effective settings")
    check.add_argument("--check", metavar="FILE", required=True,
                       help="the file to validate (with the environment's ZMESH_* on top)")

    _help_from_settings(root)
    return root


def _help_from_settings(root: argparse.ArgumentParser) -> None:
    """A flag that sets a setting and has no help of its own says what the setting says, so the
    CLI and ``zmesh.example.toml`` describe a setting in the same words."""
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _help_from_settings(command)
        elif action.help is None and action.dest in settings.SETTINGS:
            action.help = settings.SETTINGS[action.dest].help


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    command, config_file, relays = args.pop("command"), args.pop("config"), args.pop("relays", 4)
    fingerprint_only = args.pop("fingerprint", False)
    config_file = args.pop("check", None) or config_file
    try:
        cfg = settings.load(config_file, flags=args)
    except ConfigError as exc:
        print(f"zmesh: {exc}", file=sys.stderr)
        return 2
    if command == "config":
        print("\n".join(settings.describe(cfg)))
        return 0
    logging.basicConfig(level=cfg["metrics.log_level"], stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runners = {"signal": lambda: cmd_signal(cfg), "relay": lambda: cmd_relay(cfg),
               "client": lambda: cmd_client(cfg), "service": lambda: cmd_service(cfg),
               "demo": lambda: cmd_demo(cfg, relays), "status": lambda: cmd_status(cfg),
               "authority": lambda: cmd_authority(cfg, fingerprint_only)}
    try:
        asyncio.run(runners[command]())
    except ZmeshError as exc:
        print(f"zmesh {command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
