"""Streaming OpenAI-compatible client that records per-request timings.

Works against any server speaking the OpenAI API (edgefleet, vLLM, SGLang, Ollama,
llama.cpp). Timing follows BENCHMARKS.md: TTFT at the first SSE event whose ``choices`` is
non-empty, one ITL gap per later choice-bearing event, E2EL at the last one; the usage-only
chunk and ``[DONE]`` never move the clock.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.metrics import RequestRecord

NODE_HEADER = "x-edgefleet-node"
BACKENDS = {"openai": "/v1/completions", "vllm": "/v1/completions", "openai-chat": "/v1/chat/completions"}


class EndpointError(Exception):
    """The endpoint cannot be benchmarked (down, wrong key, unknown model): a user error."""


@dataclass(slots=True)
class Endpoint:
    """One OpenAI-compatible server to drive. ``base_url`` may end in ``/v1`` or not."""

    base_url: str
    model: str
    api_key: str | None = None
    label: str | None = None
    backend: str = "openai"  # vLLM's names: "openai"/"vllm" (completions) or "openai-chat"
    endpoint: str | None = None  # path of the API; default from the backend
    headers: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None  # what results call the model (vLLM's --model) when `model` is a served alias

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        url = self.base_url.rstrip("/")
        self.base_url = url[:-3] if url.endswith("/v1") else url
        if self.endpoint is None:
            self.endpoint = BACKENDS[self.backend]
        if self.label is None:
            self.label = self.base_url.split("//", 1)[-1]

    @property
    def chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")

    @property
    def api_url(self) -> str:
        return self.base_url + self.endpoint

    def auth_headers(self) -> dict[str, str]:
        h = dict(self.headers)
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def public(self) -> dict[str, Any]:
        """What a result file may say about the endpoint: never the key."""
        return {"base_url": self.base_url, "model": self.model, "model_id": self.model_id or self.model,
                "label": self.label,
                "backend": self.backend, "endpoint": self.endpoint}


@dataclass(slots=True)
class SampleRequest:
    """One request of a workload: a text prompt or a chat message list."""

    prompt: str | list[dict[str, Any]]
    prompt_len: int  # client-side count; the server's usage.prompt_tokens wins when sent
    output_len: int


def make_client(max_concurrency: int | None = None, timeout_s: float = 600.0) -> httpx.AsyncClient:
    # No pool limit below the benchmark's own gate: waiting for a pooled connection would be
    # counted as server latency.
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    timeout = httpx.Timeout(timeout_s, connect=10.0, pool=None)
    return httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)


def build_payload(ep: Endpoint, req: SampleRequest, ignore_eos: bool, extra_body: dict | None) -> dict:
    payload: dict[str, Any] = {"model": ep.model, "stream": True, "stream_options": {"include_usage": True}}
    if ep.chat:
        payload["messages"] = (req.prompt if isinstance(req.prompt, list)
                               else [{"role": "user", "content": req.prompt}])
        payload["max_completion_tokens"] = req.output_len
    else:
        payload["prompt"] = req.prompt if isinstance(req.prompt, str) else _flatten(req.prompt)
        payload["max_tokens"] = req.output_len
    if ignore_eos:
        payload["ignore_eos"] = True  # a vLLM/edgefleet extension; OpenAI itself rejects it
    if extra_body:
        payload.update(extra_body)
    return payload


def _flatten(messages: list[dict[str, Any]]) -> str:
    return "".join(str(m.get("content") or "") for m in messages)


async def send(
    client: httpx.AsyncClient,
    ep: Endpoint,
    req: SampleRequest,
    *,
    ignore_eos: bool = False,
    extra_body: dict | None = None,
    tokenizer: Any = None,
) -> RequestRecord:
    """Send one streaming request; never raises for a request-level failure."""
    payload = build_payload(ep, req, ignore_eos, extra_body)
    rec = RequestRecord(prompt_tokens=req.prompt_len)
    state = _Stream(rec)
    start = time.perf_counter()
    rec.start_time = state.start = state.last = start
    try:
        async with client.stream("POST", ep.api_url, json=payload, headers=ep.auth_headers()) as resp:
            rec.node = resp.headers.get(NODE_HEADER)
            if resp.status_code != 200:
                body = (await resp.aread()).decode("utf-8", "replace")
                rec.error = f"HTTP {resp.status_code}: {error_message(body)}"
                rec.latency = time.perf_counter() - start
                return rec
            # Split SSE events by hand from the byte stream: cheaper than aiter_lines, and a
            # client that falls behind the stream would report late TTFTs and short ITLs.
            # After [DONE] keep reading to the end of the body, as aiohttp does: leaving early
            # closes the connection, and the next request would pay for a new one on a
            # server whose event loop may be busy.
            buf = b""
            ended = False
            async for raw in resp.aiter_bytes():
                if ended:
                    continue
                buf += raw.replace(b"\r\n", b"\n") if b"\r" in raw else raw
                if b"\n\n" not in buf:
                    continue
                *blocks, buf = buf.split(b"\n\n")
                ended = any(state.feed(block) for block in blocks)
                if ended and rec.error:
                    break  # an in-stream error: nothing more worth reading
            if not ended and buf.strip():  # a last event without its blank line
                state.feed(buf)
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    rec.generated_text = "".join(state.text)
    rec.latency = state.last - start
    if state.chunks == 0 and not rec.error:
        rec.error = "no choice-bearing event received"
    rec.success = not rec.error
    if rec.success and not rec.usage_reported:
        # BENCHMARKS.md: re-tokenize only when the server sends no usage.
        rec.output_tokens = (len(tokenizer.encode(rec.generated_text, add_special_tokens=False))
                             if tokenizer is not None else state.chunks)
    return rec


class _Stream:
    """Timing state of one SSE stream. ``feed`` takes one event block; True ends the stream."""

    __slots__ = ("rec", "start", "last", "chunks", "text")

    def __init__(self, rec: RequestRecord) -> None:
        self.rec, self.start, self.last, self.chunks, self.text = rec, 0.0, 0.0, 0, []

    def feed(self, block: bytes) -> bool:
        rec = self.rec
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue  # SSE comments (pings), event:/id: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                return True
            now = time.perf_counter()
            event = json.loads(data)
            if event.get("error"):
                rec.error = f"in-stream error: {error_message(data.decode('utf-8', 'replace'))}"
                return True
            if choices := event.get("choices"):
                # TTFT at the first choice-bearing event, even an empty delta (BENCHMARKS.md).
                if self.chunks == 0:
                    rec.ttft = now - self.start
                else:
                    rec.itl.append(now - self.last)
                self.last = now
                self.chunks += 1
                c = choices[0]
                self.text.append((c.get("delta") or {}).get("content") or c.get("text") or "")
            if usage := event.get("usage"):
                if usage.get("completion_tokens") is not None:
                    rec.output_tokens = int(usage["completion_tokens"])
                    rec.usage_reported = True
                if usage.get("prompt_tokens") is not None:
                    rec.prompt_tokens = int(usage["prompt_tokens"])
        return False


def error_message(body: str) -> str:
    """The message of an OpenAI error envelope, or the start of whatever came back."""
    try:
        err = json.loads(body)
        if isinstance(err, dict):
            e = err.get("error", err)
            if isinstance(e, dict) and e.get("message"):
                return str(e["message"])[:300]
            if isinstance(e, str):
                return e[:300]
            if err.get("detail"):
                return str(err["detail"])[:300]
    except ValueError:
        pass
    return body.strip()[:300] or "(empty body)"


async def check_endpoint(client: httpx.AsyncClient, ep: Endpoint) -> list[str] | None:
    """Fail early with a clear message when the endpoint is down, the key wrong, the model unknown.

    Returns the served model ids, or None when the server has no usable ``/v1/models``.
    """
    url = ep.base_url + "/v1/models"
    try:
        resp = await client.get(url, headers=ep.auth_headers(), timeout=10.0)
    except httpx.ConnectError as exc:
        raise EndpointError(f"cannot connect to {ep.base_url}: {exc or 'connection refused'}. "
                            "Is the server running, and is the URL right?") from None
    except httpx.HTTPError as exc:
        raise EndpointError(f"{ep.base_url} did not answer: {type(exc).__name__} {exc}") from None
    if resp.status_code in (401, 403):
        hint = "set --api-key or OPENAI_API_KEY" if not ep.api_key else "check --api-key"
        raise EndpointError(f"{ep.base_url} rejected the API key (HTTP {resp.status_code}: "
                            f"{error_message(resp.text)}); {hint}")
    if resp.status_code != 200:
        return None  # some servers lack /v1/models; the test request will tell
    try:
        ids = [m["id"] for m in resp.json().get("data", [])]
    except (ValueError, AttributeError, KeyError, TypeError):
        return None
    if ids and ep.model not in ids:
        raise EndpointError(f"model {ep.model!r} is unknown to {ep.base_url}; it serves: {', '.join(ids)}")
    return ids


async def probe(client: httpx.AsyncClient, ep: Endpoint, tokenizer: Any = None) -> RequestRecord:
    """One tiny request; raise EndpointError with the server's own words if it fails."""
    rec = await send(client, ep, SampleRequest("Hello", 1, 2), tokenizer=tokenizer)
    if not rec.success:
        raise EndpointError(f"test request to {ep.api_url} (model {ep.model!r}) failed: {rec.error}")
    return rec


def env_key(spec: str | None) -> str | None:
    """``env:NAME`` reads the key from the environment, so it stays out of shell history."""
    if spec and spec.startswith("env:"):
        return os.environ.get(spec[4:])
    return spec
