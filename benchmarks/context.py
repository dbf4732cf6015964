"""What a result measured: the node's capacity document, or the machine's facts.

An edgefleet node answers ``GET /v1/capacity`` with its capacity document (hardware, model,
engine); that goes into the result as is, and a router's ``GET /v1/fleet`` (every node with
its capacity document) likewise. Any other server gets machine facts of the
machine running the benchmark, flagged with whether the target is that same machine, plus
a measured memory bandwidth (the floor of batch-1 decode) when it is.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from benchmarks.client import Endpoint


def is_local(base_url: str) -> bool:
    host = urlparse(base_url).hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def target_context(client: httpx.AsyncClient, ep: Endpoint, bandwidth: bool = True) -> dict[str, Any]:
    doc = await _get_json(client, ep, "/v1/capacity")
    if isinstance(doc, dict) and ("identity" in doc or "schema_version" in doc):
        return {"target": "edgefleet", "capacity": doc}
    fleet = await _get_json(client, ep, "/v1/fleet")  # an edgefleet router: every node's capacity
    if isinstance(fleet, dict) and fleet.get("object") == "fleet":
        return {"target": "edgefleet-router", "fleet": fleet}
    local = is_local(ep.base_url)
    out: dict[str, Any] = {"target": "other", "target_is_local": local,
                           "machine": machine_facts(bandwidth=bandwidth and local)}
    out["machine"]["measured_on"] = "target (loopback)" if local else "benchmark client, not the target"
    return out


async def _get_json(client: httpx.AsyncClient, ep: Endpoint, path: str) -> Any:
    try:
        resp = await client.get(ep.base_url + path, headers=ep.auth_headers(), timeout=5.0)
        return resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def machine_facts(bandwidth: bool = False) -> dict[str, Any]:
    import psutil

    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "gpus": _gpus(),
    }
    if bandwidth:
        facts["memory_bandwidth_gbs"] = measure_bandwidth()
    return facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict[str, Any]]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: a CPU machine
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            except pynvml.NVMLError:  # unified memory (GB10) reports N/A
                mem = None
            out.append({"index": i, "name": name if isinstance(name, str) else name.decode(),
                        "memory_total_bytes": mem})
        return out
    finally:
        pynvml.nvmlShutdown()


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Large array copy, best of ``repeats``: (bytes read + bytes written) / time, in GB/s."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9
