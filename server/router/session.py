"""Per-request routing context: session key, priority, prefix hashes, and what the node
later reported about its cache.

Session key: the ``X-Edgefleet-Session`` header (1-256 visible ASCII characters), else
the OpenAI ``user`` field, else none. Only its hash is kept, shown and logged.

Priority: the ``priority`` body field (vLLM's: an integer, lower runs first), else the
``X-Edgefleet-Priority`` header; both must be integers in [PRIORITY_MIN, PRIORITY_MAX].
Per client key the fleet file may set ``priority_default`` (used when the request gives
none) and ``priority_min`` (the most urgent value the key may use): a request asking for
more urgency is clamped to ``priority_min`` and the response says so in
``X-Edgefleet-Priority-Clamped``. The node gets ``priority`` in the body only when the
request or the key gave one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from server.edge.errors import InvalidRequest
from server.router.limits import KeyLimits
from server.router.policy import RequestInfo
from server.router.prefix_index import PrefixIndex, block_hashes, canonical_chat, canonical_completion, session_hash

SESSION_HEADER = b"x-edgefleet-session"
PRIORITY_HEADER = b"x-edgefleet-priority"
CLAMPED_HEADER = b"x-edgefleet-priority-clamped"
SESSION_MAX_CHARS = 256
PRIORITY_MIN, PRIORITY_MAX = -100, 100

_VISIBLE_ASCII = re.compile(rb"^[\x21-\x7e]{1,%d}$" % SESSION_MAX_CHARS)
_INT = re.compile(r"^[+-]?[0-9]{1,6}$")


@dataclass(slots=True)
class RouteContext:
    info: RequestInfo
    body: bytes  # what goes to the node (``priority`` added when the header or key gave it)
    clamped: int | None = None  # the priority used, when the request asked for more than allowed
    predicted_blocks: int = 0  # on the node that answered, before this request was indexed
    predicted_tokens: int = 0  # the cached tokens predicted there (precise or estimate)
    node_url: str | None = None
    reported_cached_tokens: int | None = None


def parse_session(headers: dict[bytes, bytes], user: str | None) -> str | None:
    raw = headers.get(SESSION_HEADER)
    if raw is not None:
        if not _VISIBLE_ASCII.match(raw):
            raise InvalidRequest(f"X-Edgefleet-Session must be 1 to {SESSION_MAX_CHARS} visible ASCII characters "
                                 "(no spaces or control characters).", param="X-Edgefleet-Session")
        return session_hash(raw.decode("ascii"))
    return session_hash(user) if user else None


def _range_error(param: str) -> InvalidRequest:
    return InvalidRequest(f"{param} must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
                          "(lower runs first).", param=param)


def parse_priority(raw: bytes, headers: dict[bytes, bytes]) -> tuple[int | None, bool]:
    """(priority, given in the body). Reads the body again only when it mentions priority."""
    if b'"priority"' in raw:
        value = json.loads(raw).get("priority")
        if value is not None:
            if type(value) is not int or not PRIORITY_MIN <= value <= PRIORITY_MAX:
                raise _range_error("priority")
            return value, True
    header = headers.get(PRIORITY_HEADER)
    if header is None:
        return None, False
    text = header.decode("latin-1").strip()
    if not _INT.match(text) or not PRIORITY_MIN <= int(text) <= PRIORITY_MAX:
        raise _range_error("X-Edgefleet-Priority")
    return int(text), False


def key_priority(priority: int | None, limits: KeyLimits | None) -> tuple[int | None, int | None]:
    """(priority to use, clamped value or None) under the key's default and limit."""
    if limits is None:
        return priority, None
    if priority is None:
        priority = limits.priority_default
        asked = False
    else:
        asked = True
    floor = limits.priority_min
    if floor is not None and (0 if priority is None else priority) < floor:
        # None means the node's default 0, which may itself be more urgent than allowed.
        return floor, (floor if asked else None)
    return priority, None


def build_context(req: Any, raw: bytes, headers: dict[bytes, bytes], limits: KeyLimits | None,
                  prompt_tokens: int, max_tokens: int) -> RouteContext:
    session = parse_session(headers, req.user)
    asked, in_body = parse_priority(raw, headers)
    priority, clamped = key_priority(asked, limits)
    body = raw
    if priority is not None and (priority != asked or not in_body):
        obj = json.loads(raw)
        obj["priority"] = priority
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    if hasattr(req, "messages"):
        text = canonical_chat(req.model, req.messages, req.tools)
    else:
        text = canonical_completion(req.model, req.prompt)
    info = RequestInfo(prompt_tokens, max_tokens, block_hashes(text), session, priority, time.monotonic())
    return RouteContext(info, body, clamped)


def cached_tokens_of(usage: Any) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` when the node reports it."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        return None
    value = details.get("cached_tokens")
    return value if type(value) is int and value >= 0 else None


def on_routed(index: PrefixIndex, ctx: RouteContext, node_url: str, kv_total_tokens: int | None) -> None:
    """The node answered 200: it holds (or is computing) this prompt's blocks now."""
    info = ctx.info
    if kv_total_tokens:
        index.set_capacity(node_url, kv_total_tokens)
    ctx.node_url = node_url
    ctx.predicted_blocks = index.match(node_url, info.hashes, info.session)
    if info.precise and node_url in info.precise:
        ctx.predicted_tokens = info.precise[node_url]
    else:
        ctx.predicted_tokens = ctx.predicted_blocks * index.block_tokens
    index.insert(node_url, info.hashes, info.session)


def on_reported(index: PrefixIndex, ctx: RouteContext, metrics: Any, node_name: str) -> None:
    """The node's usage said how much it had cached: count it against the prediction and
    correct the index."""
    if ctx.node_url is None or ctx.reported_cached_tokens is None:
        return
    index.correct(ctx.node_url, ctx.info.hashes, ctx.reported_cached_tokens, ctx.predicted_blocks, ctx.info.session)
    metrics.predicted_cached.labels(node_name).inc(ctx.predicted_tokens)  # precise or estimate, as used
    metrics.reported_cached.labels(node_name).inc(ctx.reported_cached_tokens)


def pick_info(model: str, prompt_tokens: int, max_tokens: int, messages: list[dict[str, Any]] | None = None,
              session: str | None = None, priority: int | None = None) -> RequestInfo:
    """A request descriptor for ``/v1/fleet/pick`` (GET) and the MCP ``pick_node`` tool."""
    if session is not None and not _VISIBLE_ASCII.match(session.encode("utf-8", "replace")):
        raise InvalidRequest(f"session must be 1 to {SESSION_MAX_CHARS} visible ASCII characters.", param="session")
    if priority is not None and not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise _range_error("priority")
    hashes: list[int] = []
    if messages:
        text = canonical_chat(model, messages)
        hashes = block_hashes(text)
        prompt_tokens = max(1, len(text) // 4)
    return RequestInfo(prompt_tokens, max_tokens, hashes, session_hash(session) if session else None, priority,
                       time.monotonic())
