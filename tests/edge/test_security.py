"""SecurityMiddleware in isolation: default-deny auth, hashed keys, rebinding guard, body limit."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from server.edge.render import install_handlers
from server.edge.security import ApiKey, KeyStore, SecurityMiddleware, hash_key
from tests.clients import asgi_client


def make_app(keys: KeyStore, loopback: bool = True, **kw) -> FastAPI:
    app = FastAPI()
    install_handlers(app, validation=RequestValidationError)

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.post("/echo")
    async def echo(request: Request):
        data = await request.body()
        return {"n": len(data), "key_id": request.scope.get("state", {}).get("key_id")}

    app.add_middleware(SecurityMiddleware, keys=keys, loopback_bind=loopback, **kw)
    return app


def client(app: FastAPI, host: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    return asgi_client(app, host)


def test_keys_are_stored_hashed_and_verified():
    store = KeyStore([ApiKey("alice", hash_key("k1")), ApiKey("bob", hash_key("k2"))])
    assert store.verify("k2") == "bob" and store.verify("k1") == "alice"
    assert store.verify("k3") is None and store.verify("") is None
    assert "k1" not in repr(store)


def test_verified_keys_are_remembered_bounded_and_only_when_accepted(monkeypatch):
    import server.edge.security as security

    store = KeyStore([ApiKey("alice", hash_key("k1"))])
    calls = []
    real = security.hash_key
    monkeypatch.setattr(security, "hash_key", lambda k: calls.append(k) or real(k))
    assert store.verify("k1") == "alice" and store.verify("k1") == "alice"
    assert calls == ["k1"]  # the second check did not hash again
    assert store.verify("nope") is None and store.verify("nope") is None
    assert calls == ["k1", "nope", "nope"]  # refusals are never remembered
    assert "k1" not in repr(store)
    monkeypatch.setattr(KeyStore, "VERIFIED_MAX", 4)
    many = KeyStore([ApiKey(f"id{i}", real(f"key{i}")) for i in range(10)])
    for i in range(10):
        assert many.verify(f"key{i}") == f"id{i}"
        assert len(many._verified) <= 4
    assert many.verify("key3") == "id3"


async def test_exempt_paths_are_exact():
    async with client(make_app(KeyStore.single("secret"))) as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/healthz")).status_code == 401  # not a prefix match
        assert (await c.post("/echo", content=b"x")).status_code == 401
        r = await c.post("/echo", content=b"x", headers={"Authorization": "Bearer secret"})
        assert r.status_code == 200 and r.json()["key_id"] == "default"
        assert (await c.post("/echo", headers={"X-Api-Key": "secret"})).status_code == 200


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000"])
async def test_loopback_hosts_pass(host):
    async with client(make_app(KeyStore()), host=host) as c:
        assert (await c.get("/health")).status_code == 200


async def test_rebinding_guard():
    async with client(make_app(KeyStore()), host="evil.example") as c:
        r = await c.get("/health")
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    async with client(make_app(KeyStore(), allowed_hosts=["gpu1.lan"]), host="gpu1.lan:8000") as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/health", headers={"Origin": "https://evil.example"})).status_code == 403
    async with client(make_app(KeyStore(), allowed_origins=["https://app.example"])) as c:
        assert (await c.get("/health", headers={"Origin": "https://app.example"})).status_code == 200


async def test_non_loopback_bind_accepts_any_host_unless_listed():
    async with client(make_app(KeyStore.single("k"), loopback=False), host="10.0.0.5:8000") as c:
        assert (await c.get("/health")).status_code == 200


async def test_body_limit_declared_and_streamed():
    async with client(make_app(KeyStore(), max_body_bytes=1000)) as c:
        assert (await c.post("/echo", content=b"x" * 1000)).json()["n"] == 1000
        assert (await c.post("/echo", content=b"x" * 1001)).status_code == 413

        async def gen():
            for _ in range(10):
                yield b"y" * 500

        r = await c.post("/echo", content=gen())
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
