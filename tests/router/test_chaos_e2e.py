"""Chaos on real processes (RELIABILITY E and H, issue 13): sim nodes and routers killed
(SIGKILL, SIGTERM), stopped (SIGSTOP/SIGCONT) and restarted by PID under continuous concurrent
load. Every request ends in a success or a clear error within a bound, the fleet recovers,
keyed retries never run a generation twice, and nothing leaves the idempotency store.

test_failover_e2e.py proves each fault on one request; here they come in a row, mid-load."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.router.chaos import MSG, Garbage, Load, generations, one_request
from tests.router.conftest import fleet, wait_http, wait_until

pytestmark = pytest.mark.e2e

NODE_OPTS = {"decode_ms": 10, "prefill_tokens_per_s": 1e6}
ROUTER_ARGS = ("--poll-interval", "0.2", "--first-byte-timeout", "1.5", "--read-timeout", "2",
               "--failure-threshold", "1", "--open-seconds", "0.5", "--limits-flush-interval", "0.2")


def long_body(stream: bool = False) -> dict:
    return {"model": "sim-model", "messages": MSG, "max_tokens": 150, "stream": stream, "ignore_eos": True}


class Fleet:
    """Nodes ``a`` (zone za) and ``b`` (zone zb) and one router on a state directory; each
    restarts on its old port, so the router (and the load) keep their URLs."""

    def __init__(self, launcher):
        self.launcher = launcher
        self.state = launcher.tmp / "chaos-state"
        self.nodes = {n: self._node(n, wait=False) for n in ("a", "b")}
        for n in self.nodes.values():  # started side by side
            wait_http(n.url + "/ready", n.popen, n.log)
        self.router = self._router()

    def _node(self, name: str, port: int | None = None, wait: bool = True):
        return self.launcher.node(name, extra=["--zone", "z" + name, "--shutdown-timeout", "1"], port=port,
                                  wait=wait, **NODE_OPTS)

    def _router(self, port: int | None = None):
        return self.launcher.router(*(a for n in self.nodes.values() for a in ("--node", n.url)), *ROUTER_ARGS,
                                    "--state-dir", str(self.state), name="chaos-router", port=port)

    def kill(self, proc, sig: int) -> None:
        os.kill(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.popen.wait(15)

    def restart_node(self, name: str, wait: bool = True) -> None:
        self.nodes[name] = self._node(name, int(self.nodes[name].url.rsplit(":", 1)[1]), wait=wait)

    def restart_router(self) -> None:
        self.router = self._router(int(self.router.url.rsplit(":", 1)[1]))

    def recovered(self, timeout: float = 15.0) -> float:
        """When the router again sees both nodes ready with closed breakers."""
        assert wait_until(lambda: all(n["ready"] and n["health"] == "closed" for n in fleet(self.router)["nodes"]),
                          timeout=timeout), fleet(self.router)
        return time.monotonic()

    def generations(self) -> float:
        return sum(generations(n.url) for n in self.nodes.values())


@pytest.fixture(scope="module")
def fl(launcher):
    return Fleet(launcher)


def summary(load: Load) -> str:
    return f"{Counter(o.kind for o in load.outcomes)}; unclear: {[(o.kind, o.detail) for o in load.unclear()][:5]}"


def assert_recovered(load: Load, since: float) -> None:
    late = load.since(since)
    assert len(late) >= 6 and all(o.kind == "ok" for o in late), [(o.kind, o.detail) for o in late if o.kind != "ok"]


def test_nodes_killed_stopped_and_restarted_under_load(fl):
    with Load(fl.router.url) as load:
        time.sleep(0.7)
        fl.kill(fl.nodes["a"], signal.SIGKILL)  # mid-stream for some: in-band errors
        fl.restart_node("a")
        os.kill(fl.nodes["b"].pid, signal.SIGSTOP)  # accepts, never answers: timeouts, failover
        time.sleep(2.5)
        os.kill(fl.nodes["b"].pid, signal.SIGCONT)
        fl.kill(fl.nodes["b"], signal.SIGTERM)  # drains: its streams finish, new requests move
        fl.restart_node("b")
        back = fl.recovered()
        time.sleep(1.0)
    assert not load.unclear(), summary(load)
    kinds = Counter(o.kind for o in load.outcomes)
    assert kinds["ok"] >= 30 and kinds["error"] + kinds["in_band"] >= 1, summary(load)  # the faults hit requests
    assert max(o.ended - o.started for o in load.outcomes) < 10.0
    assert_recovered(load, back + 0.2)
    assert {o.node for o in load.since(back + 0.2)} == {"a", "b"}


def test_router_killed_and_restarted_on_its_state_dir_under_load(fl):
    """Clients see a cut only while the router is down; every keyed answer survives both
    restarts; a keyed stream cut by the SIGKILL runs once when retried (the node aborted the
    first when the router's connection dropped), and once only."""
    cut: dict = {}
    with Load(fl.router.url) as load:
        t = threading.Thread(target=lambda: cut.update(r=asyncio.run(_one(fl.router.url, long_body(True), "k-cut"))))
        t.start()
        time.sleep(0.7)
        for sig in (signal.SIGKILL, signal.SIGTERM):
            load.down()
            fl.kill(fl.router, sig)
            fl.restart_router()
            load.up()
            time.sleep(0.7)
        back = time.monotonic()
        time.sleep(0.7)
    t.join(15)
    assert cut["r"].kind == "transport"  # the router died mid-stream: a bare cut is all a client can get
    assert not load.unclear(), summary(load)
    assert sum(o.kind == "transport" for o in load.outcomes) >= 1  # the kills cut connections
    assert_recovered(load, back)
    # Every keyed answer a client got is replayed by the restarted router; nothing runs again.
    assert len(load.keyed_ok) >= 10
    before = fl.generations()

    async def replay():
        async with httpx.AsyncClient(trust_env=False, timeout=15) as c:
            return await asyncio.gather(*(one_request(c, fl.router.url, o.request, key)
                                          for key, o in load.keyed_ok.items()))
    for first, again in zip(load.keyed_ok.values(), asyncio.run(replay())):
        assert again.kind == "ok" and again.replayed and again.body == first.body, (first.key, again.detail)
    assert fl.generations() == before
    retried = asyncio.run(_one(fl.router.url, long_body(True), "k-cut"))
    assert retried.kind == "ok" and not retried.replayed and fl.generations() == before + 1
    again = asyncio.run(_one(fl.router.url, long_body(True), "k-cut"))
    assert again.replayed and again.body == retried.body and fl.generations() == before + 1


def test_keyed_retries_across_a_node_sigkill_run_once(fl):
    """A keyed stream cut by its node's death: the first try and the two attached to it get
    the same transcript, ending in one in-band error. The retries after it run once, on the
    other node, and every later retry is a replay of that one answer. (A non-streamed call
    has no head before its answer, so the router already moves it transparently: E2.)"""
    fl.recovered()
    zone = {"x-edgefleet-zone": "za"}
    body = long_body(stream=True)

    async def scenario():
        async with httpx.AsyncClient(trust_env=False, timeout=15) as c:
            first = asyncio.create_task(one_request(c, fl.router.url, body, "k-node", zone))
            await asyncio.sleep(0.3)
            attached = [asyncio.create_task(one_request(c, fl.router.url, body, "k-node", zone))
                        for _ in range(2)]
            await asyncio.sleep(0.2)
            fl.kill(fl.nodes["a"], signal.SIGKILL)
            failed = [await first, *[await t for t in attached]]
            b_before = generations(fl.nodes["b"].url)
            retries = await asyncio.gather(*(one_request(c, fl.router.url, body, "k-node", zone)
                                             for _ in range(3)))
            later = await one_request(c, fl.router.url, body, "k-node")
            return failed, b_before, retries, later

    failed, b_before, retries, later = asyncio.run(scenario())
    assert {o.kind for o in failed} == {"in_band"} and len({o.body for o in failed}) == 1, failed[0].detail
    assert failed[0].detail == "upstream_disconnected" and failed[0].node == "a"
    assert not failed[0].replayed and failed[1].replayed
    assert [o.kind for o in retries] == ["ok"] * 3 and {o.node for o in retries} == {"b"}
    assert len({o.body for o in retries + [later]}) == 1 and later.replayed
    assert generations(fl.nodes["b"].url) == b_before + 1  # (a stays down: the tests below use b)


async def _one(url: str, body: dict, key: str | None):
    async with httpx.AsyncClient(trust_env=False, timeout=15) as c:
        return await one_request(c, url, body, key)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    from tests.router.test_idempotency_e2e import redis_url as start

    yield from start.__wrapped__(tmp_path_factory)


def test_two_routers_on_one_redis_never_run_a_key_twice(fl, launcher, redis_url):
    """The same key and body sent to two routers sharing one store at the same moment: one
    generation on the node, and both senders get the same bytes."""
    b = fl.nodes["b"].url  # one node is enough: a router does not pass the key on to a node
    args = ["--node", b]
    with ThreadPoolExecutor(2) as pool:  # started side by side
        one, two = pool.map(lambda x: launcher.router(*args, *ROUTER_ARGS, "--store", redis_url, name=f"redis-{x}"),
                            "xy")
    before = generations(b)

    async def both(key: str, stream: bool):
        async with httpx.AsyncClient(trust_env=False, timeout=15) as c:
            body = {**long_body(stream), "max_tokens": 30}
            return await asyncio.gather(one_request(c, one.url, body, key), one_request(c, two.url, body, key))
    pairs = [asyncio.run(both(f"shared-{i}", stream=i % 2 == 1)) for i in range(2)]
    for x, y in pairs:
        assert x.kind == y.kind == "ok" and x.body == y.body and x.replayed != y.replayed, (x.detail, y.detail)
    assert wait_until(lambda: generations(b) >= before + 2, timeout=5)
    time.sleep(0.3)
    assert generations(b) == before + 2
    one.stop()
    two.stop()


def _garbage_bytes(w) -> None:
    w.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n" * 4)


def _endless_head(w) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    while True:  # until the router hangs up
        w.write(b"x-junk: " + b"a" * 1000 + b"\r\n")


def _wrong_content_type(w) -> None:
    body = b"<html><body>Welcome to nginx!</body></html>"
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def _broken_sse(w) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    w.write(b"11\r\ndata: {not json\n\n\r\n")
    w.write(b"zz\r\n\x00\x01garbage")  # a broken chunk, then the connection drops


GARBAGE = {"bytes": _garbage_bytes, "endless-head": _endless_head, "content-type": _wrong_content_type,
           "sse": _broken_sse}


def test_garbage_nodes_give_clear_errors_are_marked_and_failed_over(fl, launcher):
    """Nodes that report a good capacity document and answer every generation with garbage:
    each client gets the backup's answer or a clear error, and the garbage node is marked."""
    cap = httpx.get(fl.nodes["b"].url + "/v1/capacity", trust_env=False, timeout=5).json()
    nodes = {name: Garbage(cap, reply, zone=f"g-{name}") for name, reply in GARBAGE.items()}
    try:
        router = launcher.router(*(a for g in nodes.values() for a in ("--node", g.url)), "--node",
                                 fl.nodes["b"].url, *ROUTER_ARGS, "--open-seconds", "60",
                                 name="garbage-router")
        assert wait_until(lambda: sum(n["ready"] for n in fleet(router)["nodes"]) == 5)

        async def each():
            async with httpx.AsyncClient(trust_env=False, timeout=15) as c:
                return await asyncio.gather(*(one_request(c, router.url, {**long_body(stream), "max_tokens": 5},
                                                          None, {"x-edgefleet-zone": g.zone})
                                              for g in nodes.values() for stream in (False, True)))
        outcomes = dict(zip([(n, s) for n in nodes for s in (False, True)], asyncio.run(each())))
        unclear = {k: (o.kind, o.detail) for k, o in outcomes.items() if o.kind not in ("ok", "error", "in_band")}
        assert not unclear, unclear
        view = {n["name"]: n for n in fleet(router)["nodes"]}
        for name, g in nodes.items():
            assert g.posts >= 1, name
            assert view[f"garbage-g-{name}"]["trips"] >= 1, (name, view[f"garbage-g-{name}"])
        # Marked: the next request to those zones goes straight to the backup.
        posts = {name: g.posts for name, g in nodes.items()}
        again = asyncio.run(_one(router.url, {**long_body(), "max_tokens": 2}, None))
        assert again.kind == "ok" and again.node == "b"
        assert posts == {name: g.posts for name, g in nodes.items()}
        router.stop()
    finally:
        for g in nodes.values():
            g.close()


def test_a_real_node_without_the_fleet_key_is_never_admitted(launcher):
    """A real node process that announces itself over mDNS and answers the router's challenge
    with another key is refused, and never runs a prompt: the router has no node to send one
    to. (test_discovery_trust.py admits a keyed node next to socket-level rogues that record
    every byte they get.)"""
    key, other = "chaos-fleet-key-0123456789abcdef", "not-the-fleet-key-0123456789abcd"
    key_file = launcher.tmp / "chaos.key"
    key_file.write_text(key + "\n")
    router = launcher.router("--discover", "--discover-interface", "127.0.0.1", "--poll-interval", "0.3",
                             "--discovery-allow-network", "127.0.0.0/8", "--discovered-node-key-file",
                             str(key_file), name="rogue-router", wait_ready=False)
    rogue = launcher.node("rogue", extra=["--advertise", "--api-key", other])

    def refused() -> float:
        text = httpx.get(router.url + "/metrics", timeout=5, trust_env=False).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith('edgefleet_router_discovery_refused_total{reason="proof"}'))
    assert wait_until(lambda: refused() >= 1, 20)
    time.sleep(0.5)  # time for a wrong admission to show, had there been one
    assert fleet(router)["nodes"] == []
    replies = asyncio.run(_many(router.url, 3))
    assert {o.detail for o in replies} == {"503 no_healthy_node"}
    assert generations(rogue.url, authorization=f"Bearer {other}") == 0
    assert f"not admitting the node announced at {rogue.url}: wrong proof" in router.log.read_text()


async def _many(url: str, n: int):
    async with httpx.AsyncClient(trust_env=False, timeout=15) as c:
        return await asyncio.gather(*(one_request(c, url, {**long_body(), "max_tokens": 2}, None) for _ in range(n)))
