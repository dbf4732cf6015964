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
import logging
import time
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from server.edge.errors import (ApiError, ClientGone, InternalError, InvalidRequest, NotReady, RateLimited,
                                UpstreamError, UpstreamTimeout, validation_error)
from server.edge.media import read_body, require_json
from server.edge.protocol import ChatCompletionRequest, CompletionRequest
from server.edge.render import send_error, sse_error_event
from server.router.core import Attempt, Router, new_request_id
from server.router.limits import KeyUsage, Limited
from server.router.registry import Node
from server.router.relay_scan import SseTally, count_of, usage_of
from server.router.session import CLAMPED_HEADER, RouteContext, build_context, cached_tokens_of, on_reported, on_routed
from server.router.upstream import Response as UpstreamResponse
from server.router.upstream import ResponseTooLarge, UpstreamIOError

CHARS_PER_TOKEN = 4  # prompt-length estimate for scoring; the node counts exactly

log = logging.getLogger("edgefleet.router")


def parse_body(raw: bytes, model: type[ChatCompletionRequest] | type[CompletionRequest]) -> Any:
    """Parse and validate in one pass (pydantic's JSON parser): the errors are the node's,
    and the cost is about two thirds of ``json.loads`` followed by ``model_validate``."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply.") from None


def _prompt_of(raw: bytes) -> Any:
    """The prompt as the client sent it, for ``--log-prompts`` (already known to parse)."""
    obj = json.loads(raw)
    return obj.get("messages", obj.get("prompt"))


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
                 "ttft_ms", "prompt", "route", "client", "cut", "_done")

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
        self.route: RouteContext | None = None
        self.client: str | None = None  # the client's address (host), for the audit line
        self.cut = False  # ended by the router's shutdown drain timeout
        self._done = False
        task = asyncio.current_task()
        if task is not None:
            router.streams[self] = task  # the shutdown drain waits for it, then ends it in band

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        """The node's own counts; a count that is not a non-negative int (a rogue or buggy
        node) keeps the router's estimate rather than failing the request."""
        if isinstance(usage, dict):
            prompt, completion = count_of(usage.get("prompt_tokens")), count_of(usage.get("completion_tokens"))
            if prompt is not None or completion is not None:
                self.prompt_tokens = prompt or self.prompt_tokens
                self.completion_tokens = completion or 0
                self.estimated = False
            if self.route is not None:
                self.route.reported_cached_tokens = cached_tokens_of(usage)

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        r = self.router
        r.streams.pop(self, None)
        if self.resp is not None:
            # Read to the end: the connection goes back to the pool. Not (a client left):
            # it is closed, and the node aborts the generation.
            self.resp.release()
        if self.node is not None:
            self.node.on_done()
        now = time.monotonic()
        ok = 200 <= self.status < 400 and self.error is None
        outcome = "ok" if ok else (self.error or f"http_{self.status}")
        if self.usage is not None:
            r.limiter.release(self.usage, now, self.prompt_tokens, self.completion_tokens, ok)
        node = self.node.name if self.node else "-"
        r.metrics.observe(node, self.status, now - self.started)
        route = self.route
        if route is not None and ok:
            on_reported(r.index, route, r.metrics, node)
            if self.node is not None:
                r.kv.kick(self.node)  # its events now include this prompt's blocks
        if r.audit.enabled:
            r.audit.write({
                "request_id": self.request_id, "key_id": self.key_id, "client": self.client,
                "model": self.model, "node": node,
                "stream": self.stream, "status": self.status, "outcome": outcome, "error": self.error,
                "attempts": [f"{a.node}:{a.outcome}" for a in self.attempts],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "tokens_estimated": self.estimated,
                "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 2),
                "latency_ms": round((now - self.started) * 1000.0, 2),
                **({} if route is None else {
                    "session": route.info.session, "priority": route.info.priority,
                    "predicted_cached_tokens": route.predicted_tokens,
                    "cached_tokens": route.reported_cached_tokens}),
            }, prompt=self.prompt)


def _error_event(err: ApiError) -> bytes:
    # The blank line first ends whatever event the node left half-sent.
    return b"\n\n" + sse_error_event(err)


class _Watch:
    """Notices the client leaving while its call waits on the node, and cancels the call:
    the upstream connection is then closed and the node stops generating (RELIABILITY C4).

    One task per request, reading the ASGI ``receive`` once the body is in. Once the
    response is complete the server answers that read with ``http.disconnect`` and the
    task ends by itself (``armed`` is off by then), so the normal path cancels nothing.
    """

    __slots__ = ("gone", "armed", "task")

    def __init__(self, receive: Receive):
        self.gone = False
        self.armed = True
        me = asyncio.current_task()
        assert me is not None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if self.armed:
                self.gone = True
                me.cancel()

        self.task = asyncio.ensure_future(watch())

    def disarm(self) -> None:
        """The response is complete (or being completed): a disconnect now is just the
        client hanging up."""
        self.armed = False

    def stop(self) -> None:
        """For paths that may leave the response unfinished: the server may never answer
        the watcher's read then."""
        self.armed = False
        if not self.task.done():
            self.task.cancel()


def _swallow_cancel(ours: bool) -> bool:
    """Inside ``except CancelledError``: a cancellation we caused ourselves is swallowed (the
    task goes on to answer or end); any other is for the caller to re-raise."""
    if ours:
        me = asyncio.current_task()
        assert me is not None
        me.uncancel()
    return ours


def _client_gone(watch: _Watch | None) -> bool:
    """Was the cancellation our disconnect watcher's?"""
    return _swallow_cancel(watch is not None and watch.gone)


async def _send_error(send: Send, err: ApiError) -> None:
    if not any(k.lower() == "x-edgefleet-node" for k in err.headers):
        err.headers["x-edgefleet-node"] = "router"
    await send_error(send, err)


def shutting_down() -> NotReady:
    return NotReady("The router is shutting down; retry on another router or later.", code="server_shutting_down",
                    headers={"Retry-After": "5"})


def _cut_here(ex: Exchange | None) -> bool:
    """Was the cancellation the shutdown drain's (then answer in band)?"""
    return _swallow_cancel(ex is not None and ex.cut)


def client_host(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _mark(ex: Exchange | None, status: int, error: str | None) -> None:
    if ex is not None:
        ex.status, ex.error = status, error


async def handle(router: Router, scope: Scope, receive: Receive, send: Send,
                 schema: type[ChatCompletionRequest] | type[CompletionRequest]) -> None:
    """Serve one proxied call on plain ASGI: admit, rank, open the upstream, answer.

    No Request/Response objects and one watcher task: on this path each layer costs per
    request and again per relayed chunk (docs/router.md, "Router overhead").
    """
    headers = dict(scope["headers"])
    ex: Exchange | None = None
    watch: _Watch | None = None
    reply: ApiError | None = None  # an error to answer with, once the exchange is finished
    opened = False  # the node answered: _relay or _whole owns the exchange from here
    try:
        if router.draining:
            raise shutting_down()
        require_json(headers.get(b"content-type"))
        raw = await read_body(receive)
        req = parse_body(raw, schema)
        key_id = scope.get("state", {}).get("key_id", "anonymous")
        prompt_tokens = estimate_prompt_tokens(req)
        max_tokens = (req.requested_max_tokens() if isinstance(req, ChatCompletionRequest) else req.max_tokens) \
            or router.settings.default_max_tokens
        prompt = _prompt_of(raw) if router.audit.log_prompts else None
        route = build_context(req, raw, headers, router.settings.limits.get(key_id), prompt_tokens, max_tokens)
        ex = Exchange(router, new_request_id(), key_id, req.model, req.stream, prompt_tokens, prompt)
        ex.route = route
        ex.client = client_host(scope)
        try:
            ex.usage = router.limiter.acquire(key_id, ex.started)
        except Limited as lim:
            router.metrics.rate_limited.inc()
            raise RateLimited(f"Rate limit exceeded for this key ({lim.what}).",
                              headers={"Retry-After": str(lim.retry_after)}) from None
        zone, pin = headers.get(b"x-edgefleet-zone"), headers.get(b"x-edgefleet-node")
        await router.predict_precise(req, route.info)
        ranked = router.candidates(req.model, route.info,
                                   zone=zone.decode("latin-1") if zone else None,
                                   pin=pin.decode("latin-1") if pin else None)
        watch = _Watch(receive)
        # Awaited in this task, not a new one: open_upstream counts its dispatch before this
        # request yields, so a burst is never ranked against counts missing its own members.
        ex.node, ex.resp = await router.open_upstream(scope["path"], route.body, ranked, ex.request_id,
                                                      ex.attempts, stream=req.stream)
        opened = True
        if ex.resp.status == 200:
            cap = ex.node.capacity
            on_routed(router.index, route, ex.node.url, cap.load.kv_total_tokens if cap else None)
    except asyncio.CancelledError:
        if _cut_here(ex):
            err = shutting_down()
            _mark(ex, err.status_code, err.code)
            reply = err
        else:
            _mark(ex, 499, "client_disconnected")
            if not _client_gone(watch):
                raise  # cancelled from outside (shutdown)
            return  # nobody is left to answer
    except ClientGone:
        return  # left while sending the body: nothing was admitted
    except ApiError as err:
        _mark(ex, err.status_code, err.code)
        reply = err
    except StarletteHTTPException as exc:
        _mark(ex, exc.status_code, "request_too_large")
        raise  # the body limit (413), rendered by the security middleware
    except Exception:
        log.exception("unhandled error in the proxy path")
        _mark(ex, 500, "internal_error")
        reply = InternalError("Internal server error.")
    finally:
        if not opened:  # the one cleanup for every way out before the node answered
            if watch is not None:
                if reply is not None:
                    watch.disarm()  # an answer follows; the watcher ends with the exchange
                else:
                    watch.stop()
            if ex is not None:
                await ex.finish()
    if reply is not None:
        if ex is not None:
            reply.headers.setdefault("X-Request-Id", ex.request_id)
        await _send_error(send, reply)
        return
    ex.status = ex.resp.status
    head = [(b"content-type", ex.resp.headers.get("content-type", "application/json").encode("latin-1")),
            (b"x-edgefleet-node", ex.node.name.encode()), (b"x-request-id", ex.request_id.encode())]
    if route.clamped is not None:
        head.append((CLAMPED_HEADER, str(route.clamped).encode()))
    if "retry-after" in ex.resp.headers:
        head.append((b"retry-after", ex.resp.headers["retry-after"].encode("latin-1")))
    if req.stream and ex.status == 200:
        head += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        await _relay(ex, watch, send, head)
    else:
        await _whole(ex, watch, scope, receive, send, head)


async def _relay(ex: Exchange, watch: _Watch, send: Send, head: list[tuple[bytes, bytes]]) -> None:
    """Relay the node's SSE as it arrives. After the first byte there is no retry: a node
    failing mid-stream becomes one in-band error event, and no ``[DONE]``."""
    assert ex.resp is not None and ex.node is not None
    try:
        await send({"type": "http.response.start", "status": ex.status, "headers": head})
        tally = SseTally()  # events and usage, whatever way the node's reads split them
        try:
            next_chunk = ex.resp.next_chunk
            while chunk := await next_chunk():
                if ex.ttft_ms is None:
                    ex.ttft_ms = (time.monotonic() - ex.started) * 1000.0
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # Counted once relayed: a cut or a client gone leaves the count of what it got.
                tally.feed(chunk)
                ex.completion_tokens = tally.events
            tally.close()
            ex.completion_tokens = tally.events
        except asyncio.CancelledError:
            if not _cut_here(ex):
                raise
            ex.router.metrics.shutdown_cut.inc()
            ex.error = "server_shutting_down"
            err = shutting_down()
            err.message = "The router is shutting down and its drain timeout passed; the response is incomplete."
            await send({"type": "http.response.body", "more_body": True, "body": _error_event(err)})
        except (UpstreamIOError, TimeoutError) as exc:
            timeout = isinstance(exc, TimeoutError)
            too_large = isinstance(exc, ResponseTooLarge)
            outcome = "upstream_timeout" if timeout else "upstream_disconnected"
            ex.node.record_failure(outcome)
            ex.error = "upstream_response_too_large" if too_large else outcome
            message = (f"{exc} The response is incomplete." if too_large
                       else "Phase stream: the node sent nothing within --read-timeout; the response is incomplete."
                       if timeout else "The node failed mid-stream; the response is incomplete.")
            err = (UpstreamTimeout if timeout else UpstreamError)(message, code=ex.error)
            await send({"type": "http.response.body", "more_body": True, "body": _error_event(err)})
        watch.disarm()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if tally.usage_line is not None and ex.error is None:
            ex.take_usage(tally.usage())
    except asyncio.CancelledError:
        if not _client_gone(watch):
            watch.stop()
            raise
        ex.error = ex.error or "client_disconnected"
    except OSError:  # the client's socket went away under a send
        watch.stop()
        ex.error = ex.error or "client_disconnected"
    finally:
        await ex.finish()


async def _whole(ex: Exchange, watch: _Watch, scope: Scope, receive: Receive, send: Send,
                 head: list[tuple[bytes, bytes]]) -> None:
    """A non-streamed answer (or any non-200): read it whole, then answer in one piece."""
    assert ex.resp is not None and ex.node is not None
    try:
        body = await ex.resp.read()
    except asyncio.CancelledError:
        if _cut_here(ex):
            watch.disarm()
            err = shutting_down()
            ex.status, ex.error = err.status_code, err.code
            await ex.finish()
            err.headers.update({"x-edgefleet-node": ex.node.name, "X-Request-Id": ex.request_id})
            await _send_error(send, err)
            return
        gone = _client_gone(watch)
        ex.status, ex.error = 499, "client_disconnected"
        await ex.finish()  # closing the upstream makes the node abort the generation (C4)
        if not gone:
            raise
        return
    except (UpstreamIOError, TimeoutError) as exc:
        watch.disarm()
        timeout = isinstance(exc, TimeoutError)
        ex.node.record_failure("upstream_timeout" if timeout else "upstream_disconnected")
        hdrs = {"x-edgefleet-node": ex.node.name, "X-Request-Id": ex.request_id}
        err = (UpstreamTimeout("Phase whole_response: the node stopped sending its response body within "
                               "--read-timeout; not retried, since the generation already ran there.", headers=hdrs)
               if timeout else UpstreamError(str(exc) if isinstance(exc, ResponseTooLarge)
                                             else "The node failed before completing the response.", headers=hdrs))
        ex.status, ex.error = err.status_code, err.code
        await ex.finish()
        await _send_error(send, err)
        return
    watch.disarm()
    ex.ttft_ms = (time.monotonic() - ex.started) * 1000.0
    if ex.status == 200 and b'"usage"' in body:
        ex.take_usage(usage_of(body))
    await ex.finish()
    head.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": ex.status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ProxyEndpoint:
    """The proxy as a plain ASGI app for one route (``/v1/chat/completions`` or
    ``/v1/completions``)."""

    def __init__(self, router: Router, schema: type[ChatCompletionRequest] | type[CompletionRequest]):
        self.router = router
        self.schema = schema

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        idem = self.router.idempotency
        if idem is not None and (key := idem.key_of(scope)) is not None:  # server/edge/idempotency.py
            await idem.serve(self._handle, scope, receive, send, key)
            return
        await handle(self.router, scope, receive, send, self.schema)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await handle(self.router, scope, receive, send, self.schema)
