"""Whom the router believes (RELIABILITY G1-G3): which mDNS announcements it admits, and
how far it believes any node's capacity document.

Admission of a discovered node, in order (docs/deploy.md, "Trust model"):

1. Address: the announced address must lie in one of ``--discovery-allow-network`` when
   any is given; otherwise loopback, link-local, multicast, unspecified and reserved
   addresses are refused (an announcement must not aim the router at itself or at a
   metadata service).
2. Proof: with a node key (``--discovered-node-key-file``) the node must answer a fresh
   challenge with an HMAC proof under that key (:mod:`server.fleet_proof`) before the
   router sends it the key, a poll or a prompt. Without a key there is nothing to prove:
   only nodes in an explicitly allowed network are admitted.

A refused announcement is logged and counted (``edgefleet_router_discovery_refused``) and
never added to the registry, so it never receives the key or a request.

:func:`bound_capacity` clamps every figure the routing policy reads, for every node, to
plausible ranges and rejects non-finite ones, so one document cannot claim an infinite
prefill rate or a negative wait.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from server.capacity.schema import Capacity
from server.fleet_proof import CHALLENGE_HEADER, CHALLENGE_PATH, NODE_ID_HEADER, PROOF_HEADER, proof
from server.router.upstream import UpstreamIOError, UpstreamPool

log = logging.getLogger("edgefleet.router.trust")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Unreachable(Exception):
    pass


def parse_networks(values: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--discovery-allow-network: {v!r} is not an address or CIDR network") from None
    return tuple(out)


def address_refusal(url: str, allowed: tuple[Network, ...]) -> str | None:
    """Why an announced node URL may not be admitted on address grounds, or None."""
    host = urlsplit(url).hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address"
    if allowed:
        return None if any(ip in net for net in allowed) else f"{ip} is outside --discovery-allow-network"
    for what in ("loopback", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{what}"):
            return f"{ip} is a {what.replace('_', '-')} address (allow it with --discovery-allow-network)"
    return None


async def challenge(pool: UpstreamPool, url: str, key: str, announced_id: str | None, timeout: float) -> str | None:
    """Ask the node at ``url`` to prove it holds ``key``; None if it did, else why not.
    Raises :class:`Unreachable` when no answer came (a node announces itself before it
    listens: the caller retries). Nothing secret is sent: only a fresh nonce."""
    nonce = secrets.token_hex(16)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        resp = await pool.request(url, CHALLENGE_PATH, b"", {CHALLENGE_HEADER: nonce}, method="GET",
                                  connect_timeout=timeout, head_timeout=timeout, max_body=64 * 1024)
        try:
            await resp.read()
        finally:
            resp.release()
    except (UpstreamIOError, TimeoutError) as exc:
        raise Unreachable(f"challenge failed: {exc or type(exc).__name__}") from None
    got = resp.headers.get(PROOF_HEADER)
    node_id = resp.headers.get(NODE_ID_HEADER, "")
    if not got or not node_id:
        return "no proof of the node key in the answer"
    if announced_id and node_id != announced_id:
        return f"node id {node_id!r} does not match the announced {announced_id!r}"
    if not hmac.compare_digest(got, proof(key, nonce, node_id, parts.hostname or "", port)):
        return "wrong proof of the node key"
    return None


# --- capacity bounds -------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class CapacityBounds:
    """Plausible ranges for what the policy reads. Generous to real hardware (a small model
    on a large GPU prefills some 10^5 tokens/s), tight against a report meant to capture."""

    prefill_tokens_per_s: tuple[float, float] = (1.0, 1_000_000.0)
    decode_tokens_per_s: tuple[float, float] = (0.0, 10_000_000.0)
    step_ms: tuple[float, float] = (0.01, 600_000.0)  # tpot and ttft percentiles
    wait_ms: tuple[float, float] = (0.0, 86_400_000.0)  # predicted waits, a day at most
    count: tuple[int, int] = (0, 1_000_000)  # running, waiting, tokens, requests
    slots: tuple[int, int] = (1, 100_000)  # max_concurrent_sequences


BOUNDS = CapacityBounds()


def _clamp(value: float, lo: float, hi: float, what: str) -> float:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"capacity document: {what} is NaN")
    return min(hi, max(lo, value))


def bound_capacity(cap: Capacity, b: CapacityBounds = BOUNDS) -> Capacity:
    """Clamp the figures routing reads into ``b`` (in place); NaN rejects the document."""
    load, perf, pred = cap.load, cap.performance, cap.prediction
    for name in ("running", "waiting", "waiting_prompt_tokens", "kv_free_tokens", "kv_total_tokens"):
        setattr(load, name, int(_clamp(getattr(load, name), *b.count, name)))
    load.max_concurrent_sequences = int(_clamp(load.max_concurrent_sequences, *b.slots, "max_concurrent_sequences"))
    perf.requests = int(_clamp(perf.requests, *b.count, "requests"))
    if perf.prefill_tokens_per_s is not None:
        perf.prefill_tokens_per_s = _clamp(perf.prefill_tokens_per_s, *b.prefill_tokens_per_s, "prefill_tokens_per_s")
    if perf.decode_tokens_per_s is not None:
        perf.decode_tokens_per_s = _clamp(perf.decode_tokens_per_s, *b.decode_tokens_per_s, "decode_tokens_per_s")
    for name in ("tpot_p50_ms", "ttft_p50_ms", "ttft_p95_ms"):
        if getattr(perf, name) is not None:
            setattr(perf, name, _clamp(getattr(perf, name), *b.step_ms, name))
    if pred is not None:
        pred.prompt_tokens = int(_clamp(pred.prompt_tokens, *b.count, "prompt_tokens"))
        pred.predicted_queue_wait_ms = _clamp(pred.predicted_queue_wait_ms, *b.wait_ms, "predicted_queue_wait_ms")
        pred.predicted_ttft_ms = _clamp(pred.predicted_ttft_ms, *b.wait_ms, "predicted_ttft_ms")
        # A prediction cannot promise a prompt's prefill faster than the rate cap allows.
        floor = pred.predicted_queue_wait_ms + pred.prompt_tokens * 1000.0 / b.prefill_tokens_per_s[1]
        pred.predicted_ttft_ms = max(pred.predicted_ttft_ms, floor)
    return cap


__all__ = ["BOUNDS", "CapacityBounds", "Unreachable", "address_refusal", "bound_capacity", "challenge", "parse_networks"]
