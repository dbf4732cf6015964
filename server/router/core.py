"""The router's state and its one decision: which nodes, in which order, for a request.

:class:`Router` owns the registry, the policy, the shared upstream connection pool, the
poller, mDNS discovery, the gateway limiter and the audit log. :meth:`Router.open_upstream`
walks the ranked nodes until one answers with headers (failover happens only here,
before the first byte).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass, replace

from server.edge.errors import ModelNotFound, NoHealthyNode, NotFound, Overloaded, UpstreamTimeout
from server.router.audit import AuditLog
from server.router.config import RouterSettings
from server.router.limits import RateLimiter
from server.router.metrics import RouterMetrics
from server.router.policy import Estimate, RequestInfo, estimate, make_policy
from server.router.kv_follow import KvFollower
from server.router.prefix_index import PrefixIndex
from server.router.poller import Poller
from server.router.registry import FailureOutcome, Node, NodeSpec, Registry, normalize_url
from server.router.upstream import ConnectTimeout, Response, UpstreamIOError, UpstreamPool
from server.router.warmth import prefer_warm

log = logging.getLogger("edgefleet.router")

RETRY_STATUSES = frozenset({429, 503})
ADMIT_RETRY_S = (0.2, 0.5, 1, 2, 4, 8, 15, 30, 0)  # waits between admission challenges to an unreachable node


@dataclass(slots=True)
class Attempt:
    node: str
    outcome: str  # "ok", "connect_error", "timeout", "http_503", ...


class Router:
    def __init__(self, settings: RouterSettings):
        self.settings = settings
        self.registry = Registry(settings.failure_threshold, settings.success_threshold, settings.open_s)
        for spec in settings.nodes:
            self.registry.add(spec)
        self.index = PrefixIndex()  # which prompt prefixes each node is believed to hold
        self.kv = KvFollower(stale_s=max(5.0, 3 * settings.poll_interval + 2.0))  # precise mode: KV events
        self.policy = make_policy(settings.policy, settings.seed, self.index)
        self.limiter = RateLimiter(settings.limits)
        self.idempotency = None  # server.edge.idempotency.Idempotency, set at start (server/router/persist.py)
        self.metrics = RouterMetrics(self.index)
        self.audit = AuditLog(settings.audit_log, settings.log_prompts, on_error=self.metrics.audit_errors.inc)
        self.draining = False  # SIGTERM: /ready is 503 and new proxied requests get 503 server_shutting_down
        self.streams: dict[object, asyncio.Task[None]] = {}  # relaying exchanges, ended in band at drain timeout
        self.upstream: UpstreamPool | None = None  # proxied requests (the hot path) and capacity polls
        self.poller: Poller | None = None
        self.browser = None  # server.router.discovery.NodeBrowser when --discover
        self._admitting: dict[str, asyncio.Task[None]] = {}  # announced URL -> its admission check
        from server.router.trust import parse_networks

        self._allowed_networks = parse_networks(settings.discovery_allow_networks)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # The nodes' own pool: lean keep-alive HTTP/1.1 (server/router/upstream.py), because
        # every agent call crosses it and aiohttp alone cost more than the router's 1 ms goal.
        # It never goes through an environment proxy.
        import ssl

        ctx = ssl.create_default_context(cafile=s.node_ca_file) if s.node_ca_file else None
        self.upstream = UpstreamPool(read_timeout=s.read_timeout, max_body_bytes=s.max_response_bytes,
                                     ssl_context=ctx)
        self.kv.pool = self.upstream
        self.poller = Poller(self.registry, self.upstream, s.poll_interval, after=self.kv.follow_all)
        await self.poller.poll_once()  # know the fleet before the first request
        self.poller.start()
        if s.discover:
            from server.router.discovery import NodeBrowser

            self.browser = NodeBrowser(self._discovered, self._vanished, interfaces=s.discover_interfaces)
            await self.browser.start()
            if not s.discovered_node_key and not self._allowed_networks:
                log.warning("mDNS discovery is on but can admit no node: give --discovered-node-key-file (nodes "
                            "prove they hold it) or --discovery-allow-network CIDR (docs/deploy.md, Trust model)")

    async def stop(self) -> None:
        if self.browser is not None:
            await self.browser.stop()
        for task in list(self._admitting.values()):
            task.cancel()
        if self.poller is not None:
            await self.poller.stop()
        if self.upstream is not None:
            await self.upstream.close()
        self.audit.close()

    async def drain(self, timeout: float) -> int:
        """SIGTERM: /ready turns 503 and new proxied requests get 503 server_shutting_down at
        once; in-flight exchanges may finish for up to ``timeout`` s; the rest are then ended
        (a stream with one in-band error event and no ``[DONE]``, a waiting call with 503
        server_shutting_down), each audited as such. Returns how many were ended."""
        self.draining = True
        log.info("shutting down: draining %d in-flight request(s), up to %.0f s", len(self.streams), timeout)
        deadline = time.monotonic() + timeout
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cut = 0
        for ex, task in list(self.streams.items()):
            ex.cut = True  # type: ignore[attr-defined]
            task.cancel()
            cut += 1
        if cut:
            log.warning("drain timeout: ended %d request(s) in band", cut)
            for _ in range(100):  # let the ended exchanges write their error and audit line
                if not self.streams:
                    break
                await asyncio.sleep(0.01)
        return cut

    def reload(self, new: RouterSettings) -> None:
        """SIGHUP: new client keys and limits (a revoked key is refused from the next
        request), static nodes added or removed; streams in flight are not touched."""
        s = self.settings
        s.keys.replace(new.keys.keys)
        s.limits.clear()
        s.limits.update(new.limits)
        self.limiter.limits = s.limits
        wanted = {normalize_url(spec.url): spec for spec in new.nodes}
        for node in self.registry.nodes():
            if node.source == "static" and node.url not in wanted:
                self.registry.remove(node.url)
                self.index.forget(node.url)
                log.info("reload: node %s removed", node.name)
        for url, spec in wanted.items():
            node = self.registry.find(url)
            if node is None:
                node = self.registry.add(spec)
                log.info("reload: node %s added", node.name)
            node.api_key = spec.api_key
            node.auth_headers = {"authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self.audit.reopen()
        log.info("reloaded: %d client key(s), %d configured node(s)", len(s.keys.keys), len(wanted))

    def _discovered(self, spec: NodeSpec) -> None:
        """An announcement: admitted only once it passes server/router/trust.py (G1, G2)."""
        if self.registry.find(spec.url) is not None or spec.url in self._admitting:
            return
        task = asyncio.ensure_future(self._admit(spec))
        self._admitting[spec.url] = task
        task.add_done_callback(
            lambda t, url=spec.url: self._admitting.pop(url) if self._admitting.get(url) is t else None)

    async def _admit(self, spec: NodeSpec) -> None:
        from server.router import trust

        s = self.settings
        why = trust.address_refusal(spec.url, self._allowed_networks)
        kind = "address"
        if why is None and s.discovered_node_key:
            assert self.upstream is not None
            kind = "proof"
            for delay in ADMIT_RETRY_S:  # until the node listens; cancelled if it says goodbye
                try:
                    why = await trust.challenge(self.upstream, spec.url, s.discovered_node_key, spec.node_id,
                                                timeout=max(2.0, s.connect_timeout))
                    kind = "proof"
                    break
                except trust.Unreachable as exc:
                    why, kind = str(exc), "unreachable"
                    await asyncio.sleep(delay)
        elif why is None and not self._allowed_networks:
            why = "no --discovered-node-key-file to verify it and no --discovery-allow-network trusts it"
            kind = "unverifiable"
        if why is not None:
            self.metrics.discovery_refused.labels(kind).inc()
            log.warning("not admitting the node announced at %s: %s", spec.url, why)
            return
        spec.api_key = s.discovered_node_key  # only now, after the proof; an announcement never carries one
        node = self.registry.add(spec)
        log.info("discovered node %s at %s", node.name, node.url)

    def _vanished(self, url: str) -> None:
        task = self._admitting.pop(url, None)
        if task is not None:
            task.cancel()
        node = self.registry.find(url)
        if node is not None and node.source == "mdns":
            self.registry.remove(url)
            log.info("node %s left", node.name)

    # --- choosing --------------------------------------------------------------------

    def candidates(self, model: str, req: RequestInfo,
                   zone: str | None = None, pin: str | None = None) -> list[Estimate]:
        now = time.monotonic()
        if req.model != model:  # the policies add the model's load/wake time where it is cold
            req = replace(req, model=model)
        if pin:
            node = self.registry.find(pin)
            if node is None:
                raise NotFound(f"Node '{pin[:64]}' is not in this fleet.", param="X-Edgefleet-Node",
                               code="node_not_found")
            if not node.serves(model):
                raise ModelNotFound(f"Node '{node.name}' does not serve model '{model[:128]}'.", param="model")
            if not node.is_ready(now):
                raise self.no_healthy(f"Node '{node.name}' is not ready.")
            return [estimate(node, req.prompt_tokens, cached_tokens=self.predicted_cached(node, req),
                             priority=req.priority, cache_aware=True, now=req.now, model=model)]
        nodes = self.registry.nodes()
        for n in nodes:
            if not n.is_ready(now) and self.index.blocks(n.url):
                self.index.forget(n.url)
                self.kv.forget(n.url)  # down, sleeping or draining: assume its cache is gone
        serving = [n for n in nodes if n.serves(model)]
        if not serving:
            if not nodes or any(n.capacity is None for n in nodes):
                # Some node never answered: it may serve the model, so this is not a 404.
                raise self.no_healthy(f"No healthy node is known to serve model '{model[:128]}'.")
            raise ModelNotFound(f"The model '{model[:128]}' does not exist on any node of this fleet.",
                                param="model")
        ready = [n for n in serving if n.is_ready(now)]
        if not ready:
            raise self.no_healthy(f"No healthy node serves model '{model[:128]}'.")
        if zone:
            near = [n for n in ready if n.zone == zone]
            far = [n for n in ready if n.zone != zone]
            if near:
                return (prefer_warm(self.policy.rank(near, req), model)
                        + (prefer_warm(self.policy.rank(far, req), model) if far else []))
        return prefer_warm(self.policy.rank(ready, req), model)

    async def predict_precise(self, model_req: object, info: RequestInfo) -> None:
        """Exact cached-token predictions for the nodes in precise prefix mode (kv_follow.py)."""
        if not self.policy.uses_cache:  # type: ignore[attr-defined]
            return
        precise, prompt_len = await self.kv.predict(self.registry.nodes(), model_req)
        if precise:
            info.precise = precise
            if prompt_len:
                info.prompt_tokens = prompt_len  # the node's own count beats chars / 4

    def predicted_cached(self, node: Node, req: RequestInfo) -> int:
        if req.precise and node.url in req.precise:
            return req.precise[node.url]
        return self.index.match(node.url, req.hashes, req.session) * self.index.block_tokens if req.hashes else 0

    def no_healthy(self, message: str = "No healthy node is available.") -> NoHealthyNode:
        retry = max(1, round(self.settings.open_s))
        return NoHealthyNode(message, headers={"Retry-After": str(retry)})

    # --- dispatching -----------------------------------------------------------------

    async def open_upstream(self, path: str, body: bytes, ranked: list[Estimate], request_id: str,
                            attempts: list[Attempt], stream: bool = True) -> tuple[Node, Response]:
        """Send to the best node that answers; fail over on connect errors, first-byte
        timeouts and 503/429. The caller must release the response and call ``node.on_done()``.

        A node answers a streaming request with headers at its first token, so a silent node
        is detected after ``first_byte_timeout``. A non-streaming answer has headers only when
        the generation is done: waiting longer proves nothing, and retrying could run the
        generation twice, so those wait up to ``read_timeout`` and are not retried on timeout.
        Once headers are in, each read may wait up to ``read_timeout`` (a long decode step).
        """
        assert self.upstream is not None
        s = self.settings
        deadline = time.monotonic() + max(s.total_deadline, first_byte_deadline(
            s.first_byte_timeout, s.first_byte_ttft_factor, ranked[0].ttft_ms if ranked else None))
        retry_after: str | None = None
        busy = False
        timed_out = False
        for est in ranked[: max(1, s.max_attempts)]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            node = est.node
            headers = {"content-type": "application/json", "x-request-id": request_id, **node.auth_headers}
            node.on_dispatch(est.prefill_tokens, time.monotonic() + (est.wait_ms + est.prefill_ms) / 1000.0)
            try:
                resp = await self.upstream.request(
                    node.url, path, body, headers, connect_timeout=min(s.connect_timeout, remaining),
                    head_timeout=min(first_byte_deadline(s.first_byte_timeout, s.first_byte_ttft_factor, est.ttft_ms),
                                     remaining) if stream else s.read_timeout)
            except ConnectTimeout:
                self._failed(node, attempts, "connect_timeout")
                continue
            except TimeoutError:
                self._failed(node, attempts, "timeout")
                if not stream:
                    # Sent and possibly running: retrying elsewhere could run the generation twice.
                    raise UpstreamTimeout(
                        f"Phase whole_response: node {node.name} did not finish the "
                        f"non-streamed response within --read-timeout {s.read_timeout:g} s; it was not retried "
                        "elsewhere, since the request may already be running there.") from None
                timed_out = True
                continue
            except UpstreamIOError:
                self._failed(node, attempts, "connect_error")
                continue
            except BaseException:
                node.on_done()  # cancelled (client gone): release before propagating
                raise
            if resp.status in RETRY_STATUSES:
                resp.release()
                node.on_done()
                busy = True
                retry_after = resp.headers.get("retry-after", retry_after)
                attempts.append(Attempt(node.name, f"http_{resp.status}"))
                self.metrics.failovers.inc()
                continue
            if resp.status == 200 and (problem := await _garbage(resp, stream)):
                resp.release()  # nothing has reached the client: the next node may answer properly
                log.warning("node %s answered garbage: %s", node.name, problem)
                self._failed(node, attempts, "timeout" if problem == "timeout" else "bad_response")
                continue
            attempts.append(Attempt(node.name, "ok"))
            return node, resp
        if timed_out and not busy:
            raise UpstreamTimeout(
                f"Phase first_byte: no node sent its first byte in time "
                f"(attempts: {', '.join(a.node + ':' + a.outcome for a in attempts)}).",
                headers={"Retry-After": "1"})
        if busy:
            raise Overloaded("Every node that serves this model is busy; retry later.",
                             headers={"Retry-After": _retry_after(retry_after)})
        raise self.no_healthy("No node could be reached for this request.")

    def _failed(self, node: Node, attempts: list[Attempt], outcome: FailureOutcome) -> None:
        node.on_done()
        if node.record_failure(outcome):
            self.index.forget(node.url)  # tripped: the node may be gone, its cache with it
        attempts.append(Attempt(node.name, outcome))
        self.metrics.failovers.inc()
        log.warning("node %s failed before the first byte (%s); trying the next", node.name, outcome)


async def _garbage(resp: Response, stream: bool) -> str | None:
    """Why a node's 200 is no answer to relay: the wrong content type, or (streaming) a
    first event that is not SSE with a JSON payload. Only the start is checked; past it the
    router relays bytes as they come (a transport failure still ends them in-band)."""
    ctype = resp.headers.get("content-type", "")
    want = "text/event-stream" if stream else "application/json"
    if not ctype.startswith(want):
        return f"content-type {ctype[:60]!r}, not {want}"
    if not stream:
        return None
    try:
        first = await resp.first_event()
    except TimeoutError:
        return "timeout"  # a head, then nothing for --read-timeout: as slow as no head at all
    except UpstreamIOError as exc:
        return f"it failed before its first event ({exc})"
    if not first:
        return "it closed the stream before its first event"
    for line in first.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload != b"[DONE]":
                try:
                    json.loads(payload)
                except ValueError:
                    return "its first SSE event is not JSON"
        elif line and not line.startswith((b":", b"event:", b"id:", b"retry:")):
            return "its first event is not SSE"
    return None


def first_byte_deadline(base_s: float, factor: float, predicted_ttft_ms: float | None) -> float:
    """Seconds to wait for a streaming node's first byte: ``max(base_s, factor x predicted
    TTFT)``. A 100k-token prefill predicted at 20 s gets 60 s with factor 3, not the 10 s
    default that would call a busy node dead and fail over (then prefill again elsewhere)."""
    if predicted_ttft_ms is None or predicted_ttft_ms != predicted_ttft_ms or predicted_ttft_ms == float("inf"):
        return base_s
    return max(base_s, factor * predicted_ttft_ms / 1000.0)


_ID_PREFIX = "rt-" + secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """Unique per router process and across restarts (a random prefix), without a system
    call per request as uuid4 makes: ids must be unique, not unguessable."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _retry_after(value: str | None) -> str:
    try:
        return str(max(1, int(float(value)))) if value else "1"
    except ValueError:
        return "1"
