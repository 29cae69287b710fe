"""Issue 19 defect 7 in a tab: when the target resets or the circuit dies mid-download,
``MeshVPN.fetch`` rejects with an error instead of resolving with a short body (a close-delimited
HTTP/1.0 answer cannot tell)."""

import threading
from pathlib import Path

import pytest
from playwright_support import JOIN, example_page

from tests.private_network import relay_listen
from tests.test_native_mesh import Process
from tests.test_socks_hostile import BIG, TargetServer

WEB = Path(__file__).resolve().parent.parent / "web"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """Signal server and three relays (the last an exit to the target): a 3-hop tab circuit uses all."""
    target = TargetServer()
    threading.Thread(target=target.serve_forever, daemon=True).start()
    port = target.server_address[1]
    data = tmp_path_factory.mktemp("relays")
    processes = [Process("signal", "--listen", "127.0.0.1:0", "--web-root", str(WEB))]
    url = processes[0].address[0]
    try:
        for index in range(3):
            extra = ["--exit", "--exit-allow", f"127.0.0.1/32:{port}"] if index == 2 else []
            processes.append(Process("relay", "--signal", url, "--listen", relay_listen(index + 1),
                                     "--data-dir", str(data / f"r{index}"), *extra))
        yield url, target, processes[1:]
    finally:
        for process in reversed(processes):
            process.stop()
        target.shutdown()
        target.server_close()


def test_fetch_rejects_when_the_target_resets_or_the_circuit_dies_mid_download(browser, mesh):
    url, target, relays = mesh
    page = example_page(browser, url)
    page.evaluate(JOIN, {"hops": 3, "relay": False})
    big = f"http://127.0.0.1:{target.server_address[1]}/big"
    crashed = page.evaluate("""(url) => window.vpn.fetch(url).then(
        (result) => ({ ok: true, size: result.body.length }),
        (err) => ({ ok: false, message: err.message, name: err.name, type: err.type, code: err.code }))""",
        f"http://127.0.0.1:{target.server_address[1]}/reset")  # the target resets after 2 MiB
    assert not crashed["ok"], f"fetch resolved with {crashed['size']} bytes of a reset answer"
    assert "StreamError" in crashed["message"] and "abnormally" in crashed["message"], crashed
    # The exit's END reason reaches JS as the enum's name, not parsed out of the message.
    assert (crashed["name"], crashed["type"], crashed["code"]) == ("MeshError", "StreamError", "MISC"), crashed
    target.gate.set()
    assert page.evaluate("async (url) => (await window.vpn.fetch(url)).body.length", big) == BIG  # whole
    target.gate.clear()
    target.paused.clear()
    path = page.evaluate("""async (url) => {
        window.done = window.vpn.fetch(url).then(
            (result) => ({ ok: true, size: result.body.length }),
            (err) => ({ ok: false, message: err.message, code: err.code }));
        return (await window.vpn.getStats()).path;
    }""", big)
    assert target.paused.wait(60), "the download did not start"
    middle = next(r for r in relays if r.address[1] == path[1])
    middle.proc.kill()
    middle.proc.wait()
    target.gate.set()
    outcome = page.evaluate("window.done")
    assert not outcome["ok"], f"fetch resolved with {outcome['size']} of {BIG} bytes"
    assert "StreamError" in outcome["message"] and "fetch" in outcome["message"], outcome
    assert outcome["code"] == "DESTROYED", outcome  # the circuit under the stream went
    page.close()
