"""The proxy hot path: validate, admit (key limits), rank, open upstream, relay.

SSE is relayed chunk by chunk as the node's socket yields it, never buffered. After the
first byte there is no retry: a broken upstream becomes one in-band SSE error event and
the stream ends without ``[DONE]``. Every path ends in :meth:`Exchange.finish`, which
releases the node's in-flight count and the key's concurrency slot and writes the audit
line exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.api.errors import ApiError, InvalidRequest, RateLimited, UnsupportedMediaType
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.router.core import Attempt, Router, new_request_id
from server.router.limits import KeyUsage, Limited
from server.router.registry import Node
from server.router.upstream import Response as UpstreamResponse
from server.router.upstream import UpstreamIOError

CHARS_PER_TOKEN = 4
T = TypeVar("T")


class _ClientGone(Exception):
    pass  # prompt-length estimate for scoring; the node counts exactly


def parse_body(raw: bytes, model: type[ChatCompletionRequest] | type[CompletionRequest]) -> tuple[dict, Any]:
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("Request body is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    try:
        return obj, model.model_validate(obj)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply.") from None


def estimate_prompt_tokens(req: ChatCompletionRequest | CompletionRequest) -> int:
    if isinstance(req, ChatCompletionRequest):
        chars = sum(len(m.text() or "") for m in req.messages) + 16 * len(req.messages)
    elif isinstance(req.prompt, str):
        chars = len(req.prompt)
    elif req.prompt and isinstance(req.prompt[0], int):
        return len(req.prompt)
    else:
        chars = sum(len(p) for p in req.prompt)  # type: ignore[arg-type]
    return max(1, chars // CHARS_PER_TOKEN)


class Exchange:
    """One client request through the router: everything :meth:`finish` must release."""

    __slots__ = ("router", "request_id", "key_id", "model", "stream", "started", "usage", "node", "resp",
                 "attempts", "status", "error", "prompt_tokens", "completion_tokens", "estimated",
                 "ttft_ms", "prompt", "_done")

    def __init__(self, router: Router, request_id: str, key_id: str, model: str, stream: bool,
                 prompt_tokens: int, prompt: Any):
        self.router = router
        self.request_id = request_id
        self.key_id = key_id
        self.model = model
        self.stream = stream
        self.started = time.monotonic()
        self.usage: KeyUsage | None = None
        self.node: Node | None = None
        self.resp: UpstreamResponse | None = None
        self.attempts: list[Attempt] = []
        self.status = 0
        self.error: str | None = None
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.estimated = True
        self.ttft_ms: float | None = None
        self.prompt = prompt
        self._done = False

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.estimated = False

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        r = self.router
        if self.resp is not None:
            # Read to the end: the connection goes back to the pool. Not (a client left):
            # it is closed, and the node aborts the generation.
            self.resp.release()
        if self.node is not None:
            self.node.on_done()
        now = time.monotonic()
        ok = 200 <= self.status < 400 and self.error is None
        if self.usage is not None:
            r.limiter.release(self.usage, now, self.prompt_tokens, self.completion_tokens, ok)
        node = self.node.name if self.node else "-"
        r.metrics.requests.labels(node, str(self.status)).inc()
        r.metrics.latency.observe(now - self.started)
        if r.audit.enabled:
            r.audit.write({
                "request_id": self.request_id, "key_id": self.key_id, "model": self.model, "node": node,
                "stream": self.stream, "status": self.status, "error": self.error,
                "attempts": [f"{a.node}:{a.outcome}" for a in self.attempts],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "tokens_estimated": self.estimated,
                "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 2),
                "latency_ms": round((now - self.started) * 1000.0, 2),
            }, prompt=self.prompt)


def _error_event(code: str, message: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"\n\ndata: " + json.dumps(body).encode() + b"\n\n"


class RelayResponse(Response):
    """Relays the upstream body as it arrives; cancels the upstream if the client leaves."""

    def __init__(self, ex: Exchange, headers: dict[str, str]):
        self.ex = ex
        self.body_done = False  # after this, a disconnect is just the client hanging up
        self.status_code = ex.resp.status if ex.resp is not None else 502
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = self.ex
        me = asyncio.current_task()
        gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not self.body_done:
                gone = True
                me.cancel()  # stop relaying; finish() below closes the upstream request

        # Plain asyncio rather than a task group: this runs once per request and the
        # lighter machinery is measurable on the hot path.
        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self._relay(send)
        except asyncio.CancelledError:
            if not gone:
                raise
            me.uncancel()
            ex.error = ex.error or "client_disconnected"
        except OSError:  # the client's socket went away under a send
            ex.error = ex.error or "client_disconnected"
        finally:
            watcher.cancel()
            await ex.finish()

    async def _relay(self, send: Send) -> None:
        ex = self.ex
        assert ex.resp is not None and ex.node is not None
        usage_event = b""
        events = 0
        try:
            async for chunk in ex.resp.chunks(ex.router.settings.read_timeout):
                if ex.ttft_ms is None:
                    ex.ttft_ms = (time.monotonic() - ex.started) * 1000.0
                events += chunk.count(b"data: {")
                if b'"usage"' in chunk:
                    usage_event = chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (UpstreamIOError, TimeoutError) as exc:
            now = time.monotonic()
            if isinstance(exc, TimeoutError):
                ex.node.breaker.record_failure(now)
                ex.error = "upstream_timeout"
            else:
                ex.node.breaker.trip(now)  # it died mid-stream: no more traffic until it recovers
                ex.error = "upstream_disconnected"
            ex.node.failures += 1
            ex.node.last_error = ex.error
            await send({"type": "http.response.body", "more_body": True,
                        "body": _error_event(ex.error, "The node failed mid-stream; the response is incomplete.")})
        self.body_done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        ex.completion_tokens = events
        if usage_event:
            ex.take_usage(_last_usage(usage_event))


def _last_usage(chunk: bytes) -> dict[str, Any] | None:
    for line in reversed(chunk.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                return json.loads(line[6:]).get("usage")
            except ValueError:
                return None
    return None


async def forward(router: Router, request: Request, path: str,
                  schema: type[ChatCompletionRequest] | type[CompletionRequest]) -> Response:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json.")
    raw = await request.body()
    obj, req = parse_body(raw, schema)
    key_id = request.scope.get("state", {}).get("key_id", "anonymous")
    prompt_tokens = estimate_prompt_tokens(req)
    max_tokens = (req.requested_max_tokens() if isinstance(req, ChatCompletionRequest) else req.max_tokens) \
        or router.settings.default_max_tokens
    prompt = obj.get("messages", obj.get("prompt")) if router.audit.log_prompts else None
    ex = Exchange(router, new_request_id(), key_id, req.model, req.stream, prompt_tokens, prompt)
    try:
        try:
            ex.usage = router.limiter.acquire(key_id, ex.started)
        except Limited as lim:
            router.metrics.rate_limited.inc()
            raise RateLimited(f"Rate limit exceeded for this key ({lim.what}).",
                              headers={"Retry-After": str(lim.retry_after)}) from None
        ranked = router.candidates(req.model, prompt_tokens, max_tokens,
                                   zone=request.headers.get("x-edgefleet-zone"),
                                   pin=request.headers.get("x-edgefleet-node"))
        ex.node, ex.resp = await _unless_disconnected(
            request, router.open_upstream(path, raw, ranked, ex.request_id, ex.attempts, stream=req.stream))
    except _ClientGone:
        ex.status, ex.error = 499, "client_disconnected"
        await ex.finish()
        return Response(status_code=499)
    except ApiError as err:
        ex.status, ex.error = err.status_code, err.code
        await ex.finish()
        err.headers.setdefault("X-Request-Id", ex.request_id)
        raise
    except BaseException:
        ex.status, ex.error = 499, "client_disconnected"
        await ex.finish()
        raise
    ex.status = ex.resp.status
    headers = {"x-edgefleet-node": ex.node.name, "x-request-id": ex.request_id,
               "content-type": ex.resp.headers.get("content-type", "application/json")}
    if "retry-after" in ex.resp.headers:
        headers["retry-after"] = ex.resp.headers["retry-after"]
    if req.stream and ex.status == 200:
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        return RelayResponse(ex, headers)
    return await _whole(request, ex, headers)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task unless the client leaves first (then raise _ClientGone).

    ``work`` runs in the current task, not a new one: ``open_upstream`` must count its
    dispatch before this request yields, or a burst would be ranked against counts that
    do not include its own earlier members. A cancellation lands inside ``work``, whose
    own cleanup (releasing the node count, closing the upstream) then runs.
    """
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def disconnected() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        me.cancel()

    watch = asyncio.ensure_future(disconnected())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()
        raise _ClientGone from None
    finally:
        watch.cancel()


async def _whole(request: Request, ex: Exchange, headers: dict[str, str]) -> Response:
    assert ex.resp is not None and ex.node is not None
    try:
        body = await _unless_disconnected(request, ex.resp.read(ex.router.settings.read_timeout))
    except _ClientGone:
        ex.status, ex.error = 499, "client_disconnected"
        await ex.finish()  # closing the upstream makes the node abort the generation (C4)
        return Response(status_code=499)
    except (UpstreamIOError, TimeoutError):
        ex.node.breaker.trip(time.monotonic())
        ex.status, ex.error = 502, "upstream_error"
        await ex.finish()
        from server.router.core import UpstreamError

        raise UpstreamError("The node failed before completing the response.",
                            headers={"x-edgefleet-node": ex.node.name, "X-Request-Id": ex.request_id}) from None
    except BaseException:
        ex.error = "client_disconnected"
        await ex.finish()
        raise
    ex.ttft_ms = (time.monotonic() - ex.started) * 1000.0
    if ex.status == 200 and b'"usage"' in body:
        try:
            ex.take_usage(json.loads(body).get("usage"))
        except (ValueError, AttributeError):
            pass
    await ex.finish()
    return Response(body, status_code=ex.status, headers=headers)
