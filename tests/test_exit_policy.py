"""Exit policy: nothing private is reachable unless allowed, checked after resolution."""

import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmesh.cells import EndReason
from zmesh.errors import ConfigError, ExitPolicyError, StreamError
from zmesh_relay.exit_policy import (
    ExitPolicy,
    ExitRule,
    end_reason_for,
    open_exit_connection,
    resolve_and_check,
)

FORBIDDEN = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
             "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
             "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "192.0.2.1"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_default_policy_refuses_non_public_addresses(address):
    with pytest.raises(ExitPolicyError, match="--exit-allow"):
        ExitPolicy().check(ipaddress.ip_address(address), 80)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    ExitPolicy().check(ipaddress.ip_address(address), 443)


def test_allow_rules_open_exactly_their_range():
    policy = ExitPolicy.from_rules(["127.0.0.1/32:8000-8100", "[::1]/128:443", "10.0.0.0/8:22,80"])
    policy.check(ipaddress.ip_address("127.0.0.1"), 8050)
    policy.check(ipaddress.ip_address("::1"), 443)
    policy.check(ipaddress.ip_address("10.9.9.9"), 22)
    for address, port in (("127.0.0.1", 8101), ("127.0.0.2", 8050), ("::1", 80), ("10.9.9.9", 23)):
        with pytest.raises(ExitPolicyError):
            policy.check(ipaddress.ip_address(address), port)


@pytest.mark.parametrize("rule", ["127.0.0.1", "127.0.0.1/32:0", "127.0.0.1/32:9-8", "nonsense:80",
                                  "127.0.0.1/33:80", "127.0.0.1/32:70000"])
def test_bad_rules_are_config_errors_naming_the_rule(rule):
    with pytest.raises(ConfigError, match="exit rule"):
        ExitRule.parse(rule)


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(min_value=-5, max_value=70000))
def test_check_raises_only_exit_policy_errors(address, port):
    try:
        ExitPolicy().check(address, port)
    except ExitPolicyError:
        pass


def resolver_for(*answers):
    async def resolve(host, port):
        return [ipaddress.ip_address(a) for a in answers]
    return resolve


def test_names_are_checked_after_resolution():
    policy = ExitPolicy()
    with pytest.raises(ExitPolicyError):
        asyncio.run(resolve_and_check(policy, "rebind.example", 80, resolver=resolver_for("127.0.0.1")))
    with pytest.raises(ExitPolicyError):  # one bad answer among good ones refuses the request
        asyncio.run(resolve_and_check(policy, "mixed.example", 80, resolver=resolver_for("8.8.8.8", "10.0.0.1")))
    assert asyncio.run(resolve_and_check(policy, "ok.example", 80, resolver=resolver_for("8.8.8.8"))) == [
        ipaddress.ip_address("8.8.8.8")]


def test_resolution_failure_is_a_stream_error():
    async def broken(host, port):
        raise OSError("no such name")

    with pytest.raises(StreamError) as info:
        asyncio.run(resolve_and_check(ExitPolicy(), "nowhere.invalid", 80, resolver=broken))
    assert end_reason_for(info.value) == EndReason.RESOLVE_FAILED


def test_real_loopback_connection_only_with_an_allow_rule():
    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ExitPolicyError):
                await open_exit_connection(ExitPolicy(), "127.0.0.1", port)
            reader, writer = await open_exit_connection(ExitPolicy.from_rules([f"127.0.0.1/32:{port}"]),
                                                        "127.0.0.1", port)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
        with pytest.raises(StreamError) as info:
            await open_exit_connection(ExitPolicy.from_rules([f"127.0.0.1/32:{port}"]), "127.0.0.1", port)
        assert end_reason_for(info.value) == EndReason.CONNECT_REFUSED

    asyncio.run(main())
