"""Running one API request on the engine: n sequences, accounting, disconnects, errors.

Both endpoints (chat, completions) build a :class:`Generation` and consume its merged stream
of ``(choice_index, Delta)``. Engine failures become ApiErrors here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from starlette.requests import Request

from server.edge.errors import (
    ApiError,
    ClientGone,
    ContextLengthExceeded,
    EngineUnavailable,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    NotReady,
)
from server.engine.base import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    Delta,
    EngineDeadError,
    EngineError,
    GenerateRequest,
    InvalidRequestForEngine,
    SamplingOptions,
)
from server.runtime import NodeRuntime

T = TypeVar("T")
log = logging.getLogger("edgefleet.api")


_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
OFFLOAD_BYTES = 8 << 10  # bodies above this are tokenized and templated off the event loop
_TOKENIZE = ThreadPoolExecutor(1, thread_name_prefix="edgefleet-tokenize")  # one: tokenizers are not all thread-safe


def new_id(prefix: str, request: Request | None = None) -> str:
    """The response id. A caller's ``X-Request-Id`` (the router's, say) is kept when it is a
    sane token (1-128 of ``A-Za-z0-9._:-``): the id is then ``<prefix>-<that id>``, and the
    node's log lines and the router's audit line carry the same id."""
    incoming = request.headers.get("x-request-id") if request is not None else None
    if incoming and _SANE_ID.fullmatch(incoming):
        return f"{prefix}-{incoming}"
    return f"{prefix}-{uuid.uuid4().hex}"


async def off_loop(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` (tokenizing, chat templating) on the tokenizer thread when the body is
    large, so that one multi-MiB prompt does not stall every other stream's events."""
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        size = 0
    if size <= OFFLOAD_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_TOKENIZE, fn, *args)


def check_model_and_n(runtime: NodeRuntime, model: str, n: int) -> None:
    info = runtime.engine.info
    if model != info.id:
        raise ModelNotFound(f"The model '{model[:100]}' does not exist on this node; it serves '{info.id}'.",
                            param="model")
    if n > runtime.settings.max_n:
        raise InvalidRequest(f"n must be at most {runtime.settings.max_n}.", param="n")


def resolve_max_tokens(runtime: NodeRuntime, prompt_tokens: int, requested: int | None) -> int:
    """Apply the context-length contract (RELIABILITY A1-A3): refuse, never truncate."""
    limit = runtime.engine.info.max_model_len
    if prompt_tokens >= limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens; the prompt has {prompt_tokens} tokens.",
            param="messages")
    if requested is None:
        return limit - prompt_tokens
    if prompt_tokens + requested > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens; the prompt has {prompt_tokens} tokens "
            f"and max_tokens is {requested} ({prompt_tokens + requested} in total).", param="max_tokens")
    return requested


PRIORITY_HEADER = "x-edgefleet-priority"


def resolve_priority(request: Request, body_priority: int | None) -> int:
    """The request's scheduling priority (lower runs first). The X-Edgefleet-Priority header
    overrides the body's ``priority`` field, since routers set headers; both must be integers
    in [PRIORITY_MIN, PRIORITY_MAX]."""
    allowed = f"an integer from {PRIORITY_MIN} to {PRIORITY_MAX} (lower runs first)"
    raw = request.headers.get(PRIORITY_HEADER)
    if raw is not None:
        text = raw.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 6:
            raise InvalidRequest(f"The X-Edgefleet-Priority header must be {allowed}.", param="priority")
        value = int(text)
        if not PRIORITY_MIN <= value <= PRIORITY_MAX:
            raise InvalidRequest(f"The X-Edgefleet-Priority header is {value}; it must be {allowed}.",
                                 param="priority")
        return value
    if body_priority is None:
        return 0
    if not PRIORITY_MIN <= body_priority <= PRIORITY_MAX:
        shown = str(body_priority) if abs(body_priority) < 10**12 else "out of range"
        raise InvalidRequest(f"priority is {shown}; it must be {allowed}.", param="priority")
    return body_priority


def engine_error(exc: BaseException) -> ApiError:
    if isinstance(exc, InvalidRequestForEngine):
        return InvalidRequest(str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, EngineDeadError):
        return EngineUnavailable("The inference engine is not running.")
    if isinstance(exc, EngineError):
        return InternalError("The request failed inside the engine.", code="engine_error")
    if isinstance(exc, ApiError):
        return exc
    log.error("unexpected engine failure", exc_info=exc)
    return InternalError("Internal server error.")


class Generation:
    """One admitted request: n engine sequences sharing one prompt."""

    def __init__(self, runtime: NodeRuntime, request_id: str, prompt_ids: list[int], sampling: SamplingOptions,
                 n: int, priority: int = 0):
        self.runtime = runtime
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.n = n
        self.arrival = time.monotonic()
        self.engine_ids = [f"{request_id}-{i}" for i in range(n)]
        self.finish = "abort"
        self.priority = priority
        self.cached_tokens = 0  # prompt tokens the engine found in its prefix cache
        runtime.admit(len(prompt_ids), n, priority)
        self.active = runtime.begin(request_id, self.engine_ids, len(prompt_ids), self.arrival)
        self._closed = False

    def _sampling_for(self, i: int) -> SamplingOptions:
        if self.n == 1 or self.sampling.seed is None:
            return self.sampling
        return replace(self.sampling, seed=self.sampling.seed + i)  # distinct but reproducible choices

    async def _one(self, i: int) -> AsyncIterator[tuple[int, Delta]]:
        req = GenerateRequest(self.engine_ids[i], self.prompt_ids, self._sampling_for(i), self.arrival,
                              priority=self.priority)
        async for delta in self.runtime.engine.generate(req):
            yield i, delta

    async def stream(self) -> AsyncIterator[tuple[int, Delta]]:
        """Merged deltas of all n sequences; raises ApiError for engine failures."""
        try:
            if self.n == 1:
                async for item in self._one(0):
                    self._account(item[1])
                    yield item
            else:
                async for item in _merge([self._one(i) for i in range(self.n)]):
                    self._account(item[1])
                    yield item
        except ApiError:
            raise
        except Exception as exc:
            raise engine_error(exc) from None
        finally:
            self.close()

    def _account(self, delta: Delta) -> None:
        self.runtime.on_tokens(self.active, len(delta.token_ids))
        self.cached_tokens = max(self.cached_tokens, delta.cached_tokens)
        if delta.finish_reason is not None:
            self.finish = delta.finish_reason
        if delta.finish_reason == "abort" and self.runtime.state == "draining":
            raise NotReady("The node is shutting down; the request was ended.", code="server_shutting_down")

    def close(self, finish: str | None = None) -> None:
        if not self._closed:
            self._closed = True
            self.runtime.end(self.request_id, finish or self.finish)
            log.debug("request %s finished (%s): %d prompt tokens, %.0f ms", self.request_id, finish or self.finish,
                      len(self.prompt_ids), (time.monotonic() - self.arrival) * 1000.0)


async def _merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(s: AsyncIterator[T]) -> None:
        try:
            async for item in s:
                await queue.put(item)
            await queue.put(done)
        except BaseException as exc:  # hand failures to the consumer
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it if the client goes away first (C3/C4)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ClientGone
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def start_stream(request: Request, gen: Generation) -> AsyncIterator[tuple[int, Delta]] | None:
    """Wait for the first engine step before any byte is sent, so input the engine refuses is
    still a plain 400 and a client that leaves while queued is noticed (C4). Returns the whole
    stream (first step included), or None when the client has gone."""
    stream = gen.stream()
    try:
        first = await until_disconnect(request, anext(stream, None))
    except ClientGone:
        await stream.aclose()
        return None
    except BaseException:
        await stream.aclose()
        raise

    async def chained() -> AsyncIterator[tuple[int, Delta]]:
        try:
            if first is not None:
                yield first
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    return chained()

