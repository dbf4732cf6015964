"""Helpers for the chaos tests (test_chaos_e2e.py): a concurrent load loop that classifies how
every request ended, node generation counters, and a node that answers garbage."""

from __future__ import annotations

import asyncio
import itertools
import json
import socketserver
import threading
import time
from dataclasses import dataclass, field

import httpx

from tests.router.helpers import json_200, read_requests

MSG = [{"role": "user", "content": "chaos"}]

# How a request may end. "transport" (a reset or refused connection) is clear only while the
# router itself was down; "hang" (no end within the client's bound) and "malformed" never are.
CLEAR = {"ok", "error", "in_band"}


@dataclass(slots=True)
class Outcome:
    kind: str
    started: float
    ended: float
    stream: bool
    key: str | None
    detail: str = ""
    node: str | None = None
    body: bytes = b""
    request: dict = field(default_factory=dict)
    replayed: bool = False


def classify(status: int, ctype: str, body: bytes, stream: bool) -> tuple[str, str]:
    """(kind, detail) of a response read whole."""
    if status != 200 or not stream:
        try:
            doc = json.loads(body)
        except ValueError:
            return "malformed", f"HTTP {status} {ctype}: {body[:120]!r}"
        if status == 200:
            ok = "application/json" in ctype and isinstance(doc, dict) and doc.get("choices")
            return ("ok", "") if ok else ("malformed", f"200 without choices: {body[:120]!r}")
        err = doc.get("error") if isinstance(doc, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        return ("error", f"{status} {code}") if code else ("malformed", f"HTTP {status}: {body[:120]!r}")
    data = [line[6:] for line in body.decode("utf-8", "replace").splitlines() if line.startswith("data: ")]
    if "text/event-stream" not in ctype or not data:
        return "malformed", f"stream {ctype}: {body[:120]!r}"
    try:
        events = [json.loads(d) for d in data if d != "[DONE]"]
    except ValueError:
        return "malformed", f"bad SSE event in {body[-200:]!r}"
    if data[-1] == "[DONE]" and data.count("[DONE]") == 1 and all("choices" in e for e in events):
        return "ok", ""
    last = events[-1] if events else {}
    code = last.get("error", {}).get("code") if isinstance(last.get("error"), dict) else None
    if code and data[-1] != "[DONE]":
        return "in_band", code
    return "malformed", f"stream ended without [DONE] or an error event: {body[-200:]!r}"


async def one_request(client: httpx.AsyncClient, url: str, body: dict, key: str | None,
                      headers: dict[str, str] | None = None) -> Outcome:
    hdrs = {**(headers or {}), **({"idempotency-key": key} if key else {})}
    t0 = time.monotonic()
    stream = bool(body.get("stream"))
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=hdrs) as r:
            raw = await r.aread()
        kind, detail = classify(r.status_code, r.headers.get("content-type", ""), raw, stream)
        return Outcome(kind, t0, time.monotonic(), stream, key, detail, r.headers.get("x-edgefleet-node"), raw,
                       body, r.headers.get("idempotency-replayed") == "true")
    except httpx.TimeoutException as exc:
        return Outcome("hang", t0, time.monotonic(), stream, key, repr(exc), request=body)
    except httpx.TransportError as exc:
        return Outcome("transport", t0, time.monotonic(), stream, key, repr(exc), request=body)


class Load:
    """``workers`` clients in a loop on their own thread and event loop: every other request
    streams; every third carries an Idempotency-Key and is retried with it (up to 3 times)
    until it ends in success. ``down()``/``up()`` mark when the router itself was down."""

    def __init__(self, url: str, workers: int = 4, max_tokens: int = 20, timeout: float = 15.0):
        self.url = url
        self.workers = workers
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self.keyed_ok: dict[str, Outcome] = {}
        self.down_windows: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(self.timeout * 4 + 10)
        assert not self._thread.is_alive(), "the load loop did not stop: a request hung past its bound"
        return self.outcomes

    def down(self) -> None:
        self.down_windows.append([time.monotonic(), float("inf")])

    def up(self) -> None:
        self.down_windows[-1][1] = time.monotonic()

    def since(self, t: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= t]

    def unclear(self) -> list[Outcome]:
        """Outcomes that break the invariant: not a success or a clear error, and (for a
        transport error) not explained by the router being down."""
        def router_down(o: Outcome) -> bool:
            return any(o.started <= end and o.ended >= start for start, end in self.down_windows)
        return [o for o in self.outcomes if o.kind not in CLEAR and not (o.kind == "transport" and router_down(o))]

    async def _main(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=self.workers, keepalive_expiry=1.0)
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, i: int) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                return
            stream = (n + i) % 2 == 0
            body = {"model": "sim-model", "messages": MSG, "max_tokens": self.max_tokens, "stream": stream,
                    "ignore_eos": True}
            key = f"load-{i}-{n}" if n % 3 == 0 else None
            for _ in range(3 if key else 1):
                o = await one_request(client, self.url, body, key)
                self.outcomes.append(o)
                if o.kind == "ok":
                    if key:
                        self.keyed_ok[key] = o
                    break
                await asyncio.sleep(0.1)  # back off a little, as a client would


def node_counts(url: str, **headers: str) -> dict[str, float]:
    """A node's finished generations by reason (vllm:request_success) and the ones running."""
    text = httpx.get(url + "/metrics", headers=headers, trust_env=False, timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            reason = line.split('finished_reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{")):
            out["in_flight"] = out.get("in_flight", 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def generations(url: str, **headers: str) -> float:
    """Generations a node has started: finished for any reason, or still in flight."""
    return sum(node_counts(url, **headers).values())


@dataclass(slots=True)
class Garbage:
    """A node that reports a real node's capacity (so the router ranks it first in its zone)
    and answers every POST with ``reply(handler)``: garbage bytes, an endless head, a wrong
    content type, broken SSE. Records how many POSTs it got."""

    capacity: dict
    reply: object
    zone: str
    posts: int = 0
    server: socketserver.ThreadingTCPServer | None = field(default=None)

    def __post_init__(self) -> None:
        cap = json.loads(json.dumps(self.capacity))
        cap["identity"].update(name=f"garbage-{self.zone}", node_id=f"garbage-{self.zone}", zone=self.zone)
        cap["performance"]["prefill_tokens_per_s"] = 1e5  # the fastest in its zone: it is picked first
        doc = json.dumps(cap).encode()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    for line, _ in read_requests(self.rfile):
                        if line.startswith(b"GET "):
                            self.wfile.write(json_200(doc))
                            continue
                        outer.posts += 1
                        outer.reply(self.wfile)  # type: ignore[operator]
                        return
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
