"""The idempotency core and the store in process: a counting ASGI app stands in for the proxy."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.edge.idempotency import Idempotency, Record, check_key, fingerprint, scoped_key, storable
from server.edge.errors import ApiError
from server.router.limits import KeyLimits, RateLimiter
from server.router.persist import dump_limits, load_limits
from server.store import MemoryStore, SqliteStore, open_store


class CountingApp:
    """Answers like a node: JSON with a fresh id per run, or SSE; ``status`` to fail."""

    def __init__(self, status: int = 200, stream: bool = False, delay: float = 0.0, size: int = 10):
        self.runs = 0
        self.status, self.stream, self.delay, self.size = status, stream, delay, size

    async def __call__(self, scope, receive, send):
        self.runs += 1
        body = (await receive())["body"]
        n = self.runs
        if self.stream:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(3):
                await asyncio.sleep(self.delay)
                await send({"type": "http.response.body", "body": f"data: {{\"i\": {i}, \"run\": {n}}}\n\n".encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        await asyncio.sleep(self.delay)
        out = json.dumps({"id": f"run-{n}", "echo": len(body), "pad": "x" * self.size}).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out, "more_body": False})


async def call(idem: Idempotency, app, key: bytes, body: bytes = b'{"a":1}', key_id: str = "alice",
               path: str = "/v1/chat/completions"):
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"idempotency-key", key)],
             "state": {"key_id": key_id}}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(m):
        sent.append(m)

    await idem.serve(app, scope, receive, send, key)
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def run(coro):
    return asyncio.run(coro)


def test_key_checks_and_fingerprint():
    assert check_key(b"abc-123_~") == "abc-123_~"
    for bad in (b"", b"x" * 256, b"caf\xc3\xa9", b"tab\tkey", b" lead"):
        with pytest.raises(ApiError) as info:
            check_key(bad)
        assert info.value.code == "invalid_idempotency_key"
    base = fingerprint("/v1/chat/completions", "alice", b"{}")
    assert base != fingerprint("/v1/completions", "alice", b"{}")
    assert base != fingerprint("/v1/chat/completions", "bob", b"{}")
    assert base != fingerprint("/v1/chat/completions", "alice", b"{ }")
    assert scoped_key("alice", "k") != scoped_key("bob", "k")


def test_storable_rules():
    js = [(b"content-type", b"application/json")]
    sse = [(b"content-type", b"text/event-stream")]
    assert storable(200, js, b"{}", True) and not storable(400, js, b"{}", True)
    assert not storable(404, js, b"{}", True)
    assert not storable(200, js, b"{}", False)
    assert not storable(502, js, b"{}", True) and not storable(429, js, b"{}", True)
    assert storable(200, sse, b"data: {}\n\ndata: [DONE]\n\n", True)
    assert not storable(200, sse, b"data: {}\n\n\n\ndata: {\"error\": {}}\n\n", True)


def test_replay_reuse_tenants_and_failures():
    async def go():
        idem = Idempotency(SqliteStore(None))
        app = CountingApp()
        a = await call(idem, app, b"k1")
        b = await call(idem, app, b"k1")
        assert a[0] == b[0] == 200 and a[2] == b[2] and app.runs == 1
        assert b[1][b"idempotency-replayed"] == b"true"
        reused = await call(idem, app, b"k1", body=b'{"a":2}')
        assert reused[0] == 422 and json.loads(reused[2])["error"]["code"] == "idempotency_key_reused"
        other_route = await call(idem, app, b"k1", path="/v1/completions")
        assert other_route[0] == 422 and app.runs == 1
        bob = await call(idem, app, b"k1", key_id="bob")  # another tenant: its own key space
        assert bob[0] == 200 and json.loads(bob[2])["id"] == "run-2" and app.runs == 2
        failing = CountingApp(status=503)
        assert (await call(idem, failing, b"k2"))[0] == 503
        assert (await call(idem, failing, b"k2"))[0] == 503 and failing.runs == 2  # a 5xx is not kept
    run(go())


def test_concurrent_and_streaming_attach():
    async def go():
        idem = Idempotency(SqliteStore(None))
        app = CountingApp(delay=0.05)
        replies = await asyncio.gather(*[call(idem, app, b"c1") for _ in range(5)])
        assert app.runs == 1 and len({r[2] for r in replies}) == 1
        sse = CountingApp(stream=True, delay=0.05)
        first = asyncio.create_task(call(idem, sse, b"s1"))
        await asyncio.sleep(0.08)  # one event sent, two to come
        second = await call(idem, sse, b"s1")
        assert (await first)[2] == second[2] and second[2].count(b"data: {") == 3 and sse.runs == 1
        third = await call(idem, sse, b"s1")  # finished: from the store
        assert third[2] == second[2] and sse.runs == 1
    run(go())


def test_too_large_result_keeps_only_the_outcome():
    async def go():
        idem = Idempotency(SqliteStore(None), max_bytes=100)
        app = CountingApp(size=500)
        assert (await call(idem, app, b"big"))[0] == 200
        again = await call(idem, app, b"big")
        assert again[0] == 409 and json.loads(again[2])["error"]["code"] == "idempotency_result_too_large"
        assert app.runs == 1
    run(go())


def test_store_expiry_bounds_and_persistence(tmp_path):
    async def go():
        s = SqliteStore(tmp_path / "s.sqlite3", max_entries=3)
        await s.put("short", b"v", 0.05)
        await s.put("keep", b"forever", None)
        assert await s.get("short") == b"v"
        await asyncio.sleep(0.1)
        assert await s.get("short") is None  # expired
        for i in range(5):
            await s.put(f"r{i}", b"x", 100 + i)
        assert await s.count() == 3  # the bound: the first to expire went first
        assert await s.get("r0") is None and await s.get("r4") == b"x"
        assert await s.get("keep") == b"forever"  # no expiry: never evicted by the bound
        await s.close()
        s = SqliteStore(tmp_path / "b.sqlite3", max_bytes=25)
        for i in range(4):
            await s.put(f"b{i}", b"0123456789", 100 + i)  # 10 bytes each, 25 at most
        assert [await s.get(f"b{i}") for i in range(4)] == [None, None, b"0123456789", b"0123456789"]
        await s.close()
        s2 = open_store(None, tmp_path, 10)  # reopened: what was written is there
        assert await s2.get("keep") is None  # another file (router.sqlite3)
        await s2.put("k", b"v", None)
        await s2.close()
        s3 = open_store(None, tmp_path, 10)
        assert await s3.get("k") == b"v"
        await s3.close()
    run(go())
    with pytest.raises(ValueError):
        open_store("memcached://x", None, 1)


def test_record_roundtrip():
    r = Record("fp", 201, [(b"content-type", b"text/event-stream"), (b"x", b"\xe9")], b"a\nb\x00", False)
    assert Record.unpack(r.pack()) == r


def test_limits_dump_and_load_map_the_clock():
    lim = RateLimiter({"k": KeyLimits(requests_per_min=5, tokens_per_min=1000)})
    mono = 1000.0
    for t in (mono - 70, mono - 30, mono - 1):
        u = lim.acquire("k", t)
        lim.release(u, t, 10, 5, True)
    raw = dump_limits(lim, mono, 1_700_000_000.0)
    fresh = RateLimiter({"k": KeyLimits(requests_per_min=5, tokens_per_min=1000)})
    assert load_limits(fresh, raw, 50.0, 1_700_000_010.0) == 1  # 10 s later, another monotonic origin
    u = fresh.usage["k"]
    assert (u.requests, u.prompt_tokens, u.completion_tokens, u.inflight) == (3, 30, 15, 0)
    assert [round(t, 3) for t in u.request_times] == [10.0, 39.0]  # the 70 s old one left the window
    assert [n for _, n in u.token_log] == [15, 15]


def test_memory_store_expiry_and_bound():
    async def go():
        m = MemoryStore(max_entries=2)
        await m.put("a", b"1", 0.05)
        await m.put("b", b"2", 100)
        assert await m.get("a") == b"1"
        await asyncio.sleep(0.1)
        assert await m.get("a") is None
        await m.put("c", b"3", 100)  # over the bound: the expired one goes first
        assert await m.get("b") == b"2" and await m.get("c") == b"3"
        await m.put("d", b"4", 100)  # then the oldest write
        assert await m.get("b") is None and await m.get("d") == b"4"
        small = MemoryStore(max_bytes=10)
        await small.put("x", b"12345", None)
        await small.put("y", b"123456", None)  # 11 bytes: the oldest goes
        assert await small.get("x") is None and small.bytes == 6
    run(go())


def test_store_flags_are_checked_and_reach_the_settings(tmp_path):
    from click.testing import CliRunner

    from server.router.cli import build_settings, route

    bad = CliRunner().invoke(route, ["--node", "http://127.0.0.1:9", "--store", "memcached://x"])
    assert bad.exit_code == 2 and "redis://host:port/db" in bad.output

    ctx = route.make_context("route", ["--node", "http://127.0.0.1:9", "--state-dir", str(tmp_path),
                                       "--idempotency-ttl", "60", "--idempotency-max-bytes", "5",
                                       "--store-max-entries", "7", "--store-max-bytes", "99"])
    s = build_settings(ctx.params)
    assert (s.state_dir, s.store_url, s.idempotency_ttl, s.idempotency_max_bytes, s.store_max_entries,
            s.store_max_bytes, s.limits_flush_interval) == (str(tmp_path), None, 60.0, 5, 7, 99, 1.0)


class SharedStore(MemoryStore):
    """A store two Idempotency instances (two routers) share, with a claim as Redis's SET NX."""

    def __init__(self):
        super().__init__()
        self.log: list[str] = []

    async def claim(self, key, ttl_s):  # atomic: no await suspends between the look and the write
        if await self.get(key) is not None:
            return False
        await MemoryStore.put(self, key, b"1", ttl_s)
        return True

    async def put(self, key, value, ttl_s):
        await asyncio.sleep(0.01)  # a store on the other side of a socket
        await super().put(key, value, ttl_s)
        self.log.append("put " + key.split(":")[0])


def test_two_processes_on_a_shared_store_run_a_key_once():
    async def go():
        store = SharedStore()
        one, two = Idempotency(store), Idempotency(store)
        app = CountingApp(delay=0.1)
        a, b = await asyncio.gather(call(one, app, b"k"), call(two, app, b"k"))
        assert app.runs == 1 and a[2] == b[2] and (b"idempotency-replayed" in a[1]) != (b"idempotency-replayed" in b[1])
        assert await store.get("claim:" + scoped_key("alice", "k")) is None  # the lease is released
        # The holder fails (nothing stored, lease released): the waiting process runs it itself.
        failing, ok = CountingApp(status=503, delay=0.1), CountingApp()
        first = asyncio.create_task(call(one, failing, b"f"))
        await asyncio.sleep(0.03)
        second = await call(two, ok, b"f")
        assert (await first)[0] == 503 and second[0] == 200 and failing.runs == ok.runs == 1
    run(go())


def test_the_result_is_stored_before_the_last_byte_goes_out():
    """A client that got its whole answer can retry after a SIGKILL and get it back."""
    async def go():
        store = SharedStore()
        idem = Idempotency(store)
        for stream in (False, True):
            sent = []
            scope = {"type": "http", "method": "POST", "path": "/p", "headers": [], "state": {"key_id": "a"}}

            async def receive():
                return {"type": "http.request", "body": b"{}", "more_body": False}

            async def send(m):
                if m["type"] == "http.response.body" and not m.get("more_body"):
                    store.log.append("last byte")
                sent.append(m)
            key = f"d{stream}".encode()
            await idem.serve(CountingApp(stream=stream), scope, receive, send, key)
            assert store.log[-2:] == ["put idem", "last byte"], store.log
    run(go())
