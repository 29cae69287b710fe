"""Exit policy: nothing private is reachable unless allowed, and names are checked after resolution."""

import asyncio
import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.cells import EndReason
from zmesh.errors import CircuitError, ConfigError, ExitPolicyError, StreamError
from zmesh.netaddr import classify
from zmesh_relay import exit_policy
from zmesh_relay.exit_policy import (
    ExitPolicy,
    ExitRule,
    PolicyRule,
    end_reason_for,
    open_exit_connection,
    resolve_and_check,
)

ip = ipaddress.ip_address

# (address, words the refusal must contain): every class the default policy refuses, IPv4 and IPv6.
FORBIDDEN = [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("fc00::1", "unique local"), ("fd12:3456::1", "unique local"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fec0::1", "site-local"),
    ("100.64.0.1", "shared"), ("100.127.255.254", "shared"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"), ("::7f00:1", "IPv4-compatible"),
    ("100:0:0:1::", "reserved"), ("fe00::1", "reserved"),
    ("192.0.2.1", "documentation"), ("2001:db8::1", "documentation"), ("198.18.0.1", "benchmarking"),
    ("192.0.0.8", "IETF"), ("100::1", "discard"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("64:ff9b:1::a00:1", "NAT64"),
    # IPv4 hidden in IPv6: mapped, NAT64 (RFC 6052) and 6to4 forms reach the IPv4 host
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1, private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1, loopback"),
    ("64:ff9b::c0a8:101", "NAT64 form of 192.168.1.1, private"),
    ("2002:7f00:1::1", "6to4 form of 127.0.0.1, loopback"),
    ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254, link-local"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address, why", FORBIDDEN)
def test_default_policy_refuses_every_non_public_class(address, why):
    with pytest.raises(ExitPolicyError) as info:
        ExitPolicy().check(ip(address), 80)
    message = str(info.value)
    assert str(ip(address)) in message and why in message and "--exit-allow" in message


@pytest.mark.parametrize("address, why", FORBIDDEN)
def test_the_suggested_rule_admits_exactly_that_target(address, why):
    with pytest.raises(ExitPolicyError) as info:
        ExitPolicy().check(ip(address), 8080)
    rule = re.search(r"--exit-allow (\S+)", str(info.value))[1]
    policy = ExitPolicy.from_rules([rule])
    policy.check(ip(address), 8080)
    with pytest.raises(ExitPolicyError):
        policy.check(ip(address), 8081)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_is_allowed_on_any_port(address):
    for port in (1, 22, 80, 443, 65535):
        ExitPolicy().check(ip(address), port)
    assert classify(ip(address)) is None


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_impossible_ports_are_refused_even_when_allowed(port):
    policy = ExitPolicy.from_rules(["0.0.0.0/0:*"], allow_private=True)
    with pytest.raises(ExitPolicyError, match="port"):
        policy.check(ip("8.8.8.8"), port)


@pytest.mark.parametrize("text, network, ports", [
    ("127.0.0.1/32:8000-9000", "127.0.0.1/32", ((8000, 9000),)),
    ("127.0.0.1:22", "127.0.0.1/32", ((22, 22),)),
    ("10.0.0.0/8:*", "10.0.0.0/8", ((1, 65535),)),
    ("0.0.0.0/0:80,443", "0.0.0.0/0", ((80, 80), (443, 443))),
    (" 192.168.0.0/16:22, 8000-8100 ", "192.168.0.0/16", ((22, 22), (8000, 8100))),
    ("[::1]/128:80", "::1/128", ((80, 80),)),
    ("[::1]:80", "::1/128", ((80, 80),)),
    ("fd00::/8:1-1024", "fd00::/8", ((1, 1024),)),
    ("10.1.2.3/8:1", "10.0.0.0/8", ((1, 1),)),
])
def test_rules_parse(text, network, ports):
    rule = ExitRule.parse(text)
    assert rule.network == ipaddress.ip_network(network) and rule.ports == ports


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1/32:0", "127.0.0.1/32:9-8", "nonsense:80",
                                  "127.0.0.1/33:80", "127.0.0.1/32:70000", "127.0.0.1/32:", "127.0.0.1/32:80,",
                                  "::1:80", "[::1:80", "[::1]x:80", "[::1]/129:80", "127.0.0.1/32:+80",
                                  "127.0.0.1/32:٨٠", "10.0.0.0/8:1-2-3", ""])
def test_bad_rules_are_config_errors_naming_the_rule(text):
    with pytest.raises(ConfigError) as info:
        ExitRule.parse(text)
    assert f"exit rule {text!r}" in str(info.value)


@pytest.mark.parametrize("parse", [ExitRule.parse, PolicyRule.parse], ids=["exit-allow", "exit.policy"])
@given(text=st.text(max_size=40))
def test_rule_parsing_raises_only_config_errors(parse, text):
    try:
        parse(text)
    except ConfigError:
        pass


def test_allow_rules_open_exactly_their_addresses_and_ports():
    policy = ExitPolicy.from_rules(["127.0.0.1/32:8000-8100", "[::1]/128:443", "10.0.0.0/8:22,80"])
    policy.check(ip("127.0.0.1"), 8000)
    policy.check(ip("127.0.0.1"), 8100)
    policy.check(ip("::ffff:127.0.0.1"), 8050)  # the mapped form is the same socket target
    policy.check(ip("::1"), 443)
    policy.check(ip("10.9.9.9"), 22)
    for address, port in (("127.0.0.1", 8101), ("127.0.0.1", 7999), ("127.0.0.2", 8050), ("::1", 80),
                          ("10.9.9.9", 23), ("192.168.0.1", 22), ("64:ff9b::7f00:1", 8050)):
        with pytest.raises(ExitPolicyError):
            policy.check(ip(address), port)


def test_allow_private_opens_hosts_but_not_unspecified_or_multicast():
    policy = ExitPolicy(allow_private=True)
    for address in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.1.1", "100.64.0.1", "::1", "fd00::1",
                    "::ffff:192.168.1.1"):
        policy.check(ip(address), 80)
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "240.0.0.1"):
        with pytest.raises(ExitPolicyError):
            policy.check(ip(address), 80)


DEFAULT_SUMMARY = ((1, 24), (26, 118), (120, 134), (140, 444), (446, 464), (466, 562), (564, 586),
                   (588, 1213), (1215, 4660), (4667, 6345), (6430, 6698), (6700, 6880), (7000, 65535))


def test_default_policy_refuses_mail_and_abuse_prone_ports_and_publishes_the_rest():
    policy = ExitPolicy()
    assert policy.summary_ports() == DEFAULT_SUMMARY
    for port in (25, 119, 135, 139, 445, 465, 563, 587, 1214, 4661, 4666, 6346, 6429, 6699, 6881, 6999):
        with pytest.raises(ExitPolicyError, match=f"port {port}: rule 'reject \\*:[0-9-]+' of the default policy"):
            policy.check(ip("8.8.8.8"), port)
    for port in (1, 24, 26, 80, 443, 464, 466, 586, 588, 6880, 7000, 65535):
        policy.check(ip("8.8.8.8"), port)
    assert {str(rule) for rule in exit_policy.DEFAULT_POLICY} >= {"reject *:25", "reject *:6881-6999", "accept *:*"}


def test_operator_rules_come_first_and_the_first_match_wins():
    policy = ExitPolicy.from_rules([], policy=["reject 8.8.0.0/16:*", "accept *:25", "reject *:80,443",
                                               "accept 1.1.1.1:80", "REJECT [2001:4860::]/32:22"])
    policy.check(ip("1.1.1.1"), 25)  # accept *:25 before the default reject
    policy.check(ip("::ffff:1.1.1.1"), 25)
    with pytest.raises(ExitPolicyError, match="rule 'reject 8.8.0.0/16:\\*' of exit.policy"):
        policy.check(ip("8.8.8.8"), 25)
    with pytest.raises(ExitPolicyError, match="reject \\*:80,443"):
        policy.check(ip("1.1.1.1"), 80)  # the later accept never gets a say
    with pytest.raises(ExitPolicyError, match=re.escape("reject [2001:4860::]/32:22")):
        policy.check(ip("2001:4860::8888"), 22)
    policy.check(ip("2606:4700::1"), 22)
    with pytest.raises(ExitPolicyError, match="default policy"):
        policy.check(ip("1.1.1.1"), 587)
    # the summary follows the * rules only: 25 opened, 80 and 443 closed
    summary = policy.summary_ports()
    assert any(low <= 25 <= high for low, high in summary)
    assert not any(low <= port <= high for low, high in summary for port in (80, 443, 587))


def test_a_policy_rule_never_opens_an_address_the_address_layer_refuses():
    policy = ExitPolicy.from_rules([], policy=["accept *:*", "accept 127.0.0.0/8:*"])
    with pytest.raises(ExitPolicyError, match="loopback address; to allow it, start the exit with --exit-allow"):
        policy.check(ip("127.0.0.1"), 8080)
    # --exit-allow opens the address; the port layer still applies to it
    allowed = ExitPolicy.from_rules(["127.0.0.1/32:*"])
    allowed.check(ip("127.0.0.1"), 8080)
    with pytest.raises(ExitPolicyError, match="rule 'reject \\*:25' of the default policy"):
        allowed.check(ip("127.0.0.1"), 25)
    ExitPolicy.from_rules(["127.0.0.1/32:*"], policy=["accept *:25"]).check(ip("127.0.0.1"), 25)


star_rules = st.lists(st.tuples(st.booleans(), st.integers(1, 400), st.integers(0, 30)), max_size=12).map(
    lambda rules: [f"{'accept' if accept else 'reject'} *:{low}-{min(low + width, 65535)}"
                   for accept, low, width in rules])


@settings(max_examples=150, deadline=None)
@given(rules=star_rules)
def test_the_summary_admits_exactly_the_ports_the_policy_accepts_for_a_public_address(rules):
    policy = ExitPolicy.from_rules([], policy=rules)
    summary = policy.summary_ports()
    assert all(high + 1 < low for (_, high), (low, _) in zip(summary, summary[1:], strict=False))  # merged, sorted
    for port in [*range(1, 460), 587, 6881, 65535]:
        try:
            policy.check(ip("93.184.216.34"), port)
            accepted = True
        except ExitPolicyError:
            accepted = False
        assert accepted == any(low <= port <= high for low, high in summary), (rules, port)


def test_a_policy_that_refuses_everything_publishes_no_ports():
    assert ExitPolicy.from_rules([], policy=["reject *:*"]).summary_ports() == ()
    assert ExitPolicy.from_rules([], policy=["accept *:80", "reject *:*"]).summary_ports() == ((80, 80),)


def test_a_summary_too_long_for_a_descriptor_is_refused_at_start():
    rules = [f"accept *:{port}" for port in range(1000, 1200, 2)] + ["reject *:*"]
    with pytest.raises(ConfigError, match="separate port ranges"):
        ExitPolicy.from_rules([], policy=rules)


@pytest.mark.parametrize("rule", ["", "accept", "allow *:80", "accept *", "accept *:", "accept *:0",
                                  "accept *:70000", "accept *:90-80", "accept 10.0.0.0/33:*", "accept ::1:80",
                                  "accept [::1:80", "reject 10.0.0.1", "accept *:a", "accept **:80",
                                  "accept 300.1.1.1:80", "accept *:80;reject *:*"])
def test_bad_policy_rules_are_config_errors_naming_the_rule(rule):
    with pytest.raises(ConfigError, match="exit policy rule .* is invalid"):
        PolicyRule.parse(rule)


def test_policy_rules_print_as_they_parse():
    for text in ("accept *:25", "reject 10.0.0.0/8:*", "reject [2001:db8::]/32:80,443", "accept 1.2.3.4/32:1-1024"):
        assert str(PolicyRule.parse(text)) == text
        assert str(PolicyRule.parse(str(PolicyRule.parse(text)))) == text


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6),
                      st.ip_addresses(v=4).map(lambda a: ip(f"::ffff:{a}")),
                      st.ip_addresses(v=4).map(lambda a: ip(int(ip("64:ff9b::")) | int(a))),
                      st.ip_addresses(v=4).map(lambda a: ip((0x2002 << 112) | (int(a) << 80))))


def _reached_host(address):
    """The host a socket to ``address`` reaches, judged independently with ``ipaddress`` flags."""
    if address.version == 6:
        if address.ipv4_mapped:
            return address.ipv4_mapped
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return ip(int(address) & 0xFFFFFFFF)
        if address.sixtofour:
            return address.sixtofour
    return address


def _special(address) -> bool:
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_unspecified or address.is_reserved or getattr(address, "is_site_local", False))


@given(addresses, st.integers(min_value=-5, max_value=70000))
def test_check_raises_nothing_but_exit_policy_errors(address, port):
    try:
        ExitPolicy().check(address, port)
    except ExitPolicyError:
        return
    assert 1 <= port <= 65535
    assert not _special(_reached_host(address)), address


def resolver_for(*answers, calls=None):
    async def resolve(host, port):
        if calls is not None:
            calls.append((host, port))
        return [ip(a) for a in answers]
    return resolve


def test_a_name_resolving_to_loopback_is_refused():
    with pytest.raises(ExitPolicyError, match="127.0.0.1"):
        asyncio.run(resolve_and_check(ExitPolicy(), "rebind.example", 80, resolver=resolver_for("127.0.0.1")))


@pytest.mark.parametrize("answers", [("8.8.8.8", "10.0.0.1"), ("10.0.0.1", "8.8.8.8"),
                                     ("2606:4700::1", "::ffff:127.0.0.1"), ("1.1.1.1", "fe80::1")])
def test_one_forbidden_answer_among_public_ones_refuses_the_request(answers):
    with pytest.raises(ExitPolicyError):
        asyncio.run(resolve_and_check(ExitPolicy(), "mixed.example", 80, resolver=resolver_for(*answers)))


def test_allowed_answers_come_back_in_order_without_duplicates():
    resolver = resolver_for("8.8.8.8", "2606:4700::1", "8.8.8.8", "1.1.1.1")
    found = asyncio.run(resolve_and_check(ExitPolicy(), "ok.example", 443, resolver=resolver))
    assert found == [ip("8.8.8.8"), ip("2606:4700::1"), ip("1.1.1.1")]


def test_ip_literals_are_checked_without_resolving():
    calls = []
    resolver = resolver_for("8.8.8.8", calls=calls)
    assert asyncio.run(resolve_and_check(ExitPolicy(), "1.1.1.1", 80, resolver=resolver)) == [ip("1.1.1.1")]
    with pytest.raises(ExitPolicyError):
        asyncio.run(resolve_and_check(ExitPolicy(), "::1", 80, resolver=resolver))
    assert calls == []


def test_the_system_resolver_runs_at_the_exit_and_is_checked():
    # "localhost" and "127.1" resolve locally, without a network, to loopback
    for name in ("localhost", "127.1"):
        with pytest.raises(ExitPolicyError):
            asyncio.run(resolve_and_check(ExitPolicy(), name, 80))
    allowed = ExitPolicy.from_rules(["127.0.0.0/8:80", "[::1]/128:80"])
    assert ip("127.0.0.1") in asyncio.run(resolve_and_check(allowed, "localhost", 80))


@pytest.mark.parametrize("failure", [OSError("no such name"), UnicodeError("label too long"), None])
def test_resolution_failure_is_a_resolve_failed_stream_error(failure):
    async def broken(host, port):
        if failure is not None:
            raise failure
        return []

    with pytest.raises(StreamError) as info:
        asyncio.run(resolve_and_check(ExitPolicy(), "nowhere.invalid", 80, resolver=broken))
    assert info.value.reason is EndReason.RESOLVE_FAILED
    assert end_reason_for(info.value) == EndReason.RESOLVE_FAILED


async def _echo_server():
    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_real_loopback_connection_needs_an_allow_rule():
    async def main():
        server, port = await _echo_server()
        async with server:
            with pytest.raises(ExitPolicyError):
                await open_exit_connection(ExitPolicy(), "127.0.0.1", port)
            with pytest.raises(ExitPolicyError):
                await open_exit_connection(ExitPolicy(), "localhost", port)
            reader, writer = await open_exit_connection(ExitPolicy.from_rules([f"127.0.0.1/32:{port}"]),
                                                        "127.0.0.1", port)
            writer.write(b"ping")
            assert await reader.read() == b"ping"
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_connects_to_the_checked_address_without_resolving_again():
    async def main():
        calls = []
        server, port = await _echo_server()
        async with server:
            policy = ExitPolicy.from_rules([f"127.0.0.0/8:{port}"])
            # 127.0.0.2 has no listener (the server is bound to 127.0.0.1 only): refused, next address
            resolver = resolver_for("127.0.0.2", "127.0.0.1", calls=calls)
            reader, writer = await open_exit_connection(policy, "svc.example", port, resolver=resolver)
            assert writer.get_extra_info("peername")[0] == "127.0.0.1"
            writer.close()
            await writer.wait_closed()
        assert calls == [("svc.example", port)]

    asyncio.run(main())


def test_connection_refused_and_timeout_become_stream_errors(monkeypatch):
    async def main():
        server, port = await _echo_server()
        server.close()
        await server.wait_closed()
        policy = ExitPolicy.from_rules([f"127.0.0.1/32:{port}"])
        with pytest.raises(StreamError) as info:
            await open_exit_connection(policy, "127.0.0.1", port)
        assert info.value.reason is EndReason.CONNECT_REFUSED
        assert end_reason_for(info.value) == EndReason.CONNECT_REFUSED

        async def never_connects(host, port):
            await asyncio.get_running_loop().create_future()

        monkeypatch.setattr(exit_policy.asyncio, "open_connection", never_connects)
        with pytest.raises(StreamError) as info:
            await open_exit_connection(policy, "127.0.0.1", port, timeout=0.01)
        assert info.value.reason is EndReason.TIMEOUT
        assert end_reason_for(info.value) == EndReason.TIMEOUT

    asyncio.run(main())


def test_a_resolver_that_hangs_is_cut_off_by_the_timeout():
    async def hangs(host, port):
        await asyncio.get_running_loop().create_future()

    with pytest.raises(StreamError) as info:
        asyncio.run(open_exit_connection(ExitPolicy(), "slow.example", 80, timeout=0.01, resolver=hangs))
    assert info.value.reason is EndReason.RESOLVE_FAILED


@pytest.mark.parametrize("exc, reason", [
    (ExitPolicyError("no"), EndReason.EXIT_POLICY), (StreamError("x", EndReason.EXIT_POLICY), EndReason.EXIT_POLICY),
    (StreamError("x", EndReason.RESOLVE_FAILED), EndReason.RESOLVE_FAILED),
    (StreamError("x", EndReason.CONNECT_REFUSED), EndReason.CONNECT_REFUSED),
    (StreamError("x", EndReason.TIMEOUT), EndReason.TIMEOUT), (TimeoutError(), EndReason.TIMEOUT),
    (StreamError("x", EndReason.DESTROYED), EndReason.MISC),
    (StreamError("x", EndReason.PROTOCOL), EndReason.MISC), (StreamError("x", EndReason.DONE), EndReason.MISC),
    (CircuitError("x"), EndReason.MISC),
    (RuntimeError("bug"), EndReason.MISC),
])
def test_end_reasons(exc, reason):
    assert end_reason_for(exc) == reason
