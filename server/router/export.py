"""``edgefleet fleet --export llm-d``: the router's live view as an endpoints file for an
endpoint picker (llm-d's router / the Gateway API Inference Extension EPP) run without
Kubernetes, so Envoy + the EPP can front an edgefleet fleet (docs/deploy.md).

One entry per (ready node, model) in the EPP's endpoint vocabulary: a literal IP address
(host names are resolved here, once per write), the port as a string, and labels (the
model, the edgefleet node name, zone and engine). The file is replaced atomically (written
to a temporary file in the same directory, fsynced, then ``os.replace``), so a watcher
never reads half a file.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

MODEL_LABEL = "llm-d.ai/model"
NODE_LABEL = "edgefleet.io/node"


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


def llmd_endpoints(fleet: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the endpoints document, warnings) from a router's ``GET /v1/fleet``."""
    out: list[dict[str, Any]] = []
    warnings: list[str] = []
    for n in fleet.get("nodes", []):
        cap = n.get("capacity") or {}
        if not n.get("ready") or not cap.get("models"):
            continue
        u = urlsplit(n["url"])
        address = _literal(u.hostname or "")
        if address is None:
            warnings.append(f"node {n['name']}: cannot resolve {u.hostname!r}; left out")
            continue
        port = u.port or (443 if u.scheme == "https" else 80)
        for m in cap["models"]:
            labels = {MODEL_LABEL: m["id"], NODE_LABEL: n["name"],
                      "edgefleet.io/engine": (cap.get("identity") or {}).get("engine", "unknown")}
            if n.get("zone"):
                labels["edgefleet.io/zone"] = n["zone"]
            out.append({"name": f"{n['name']}-{m['id']}".replace("/", "-"), "address": address,
                        "port": str(port), "labels": labels})
    return {"endpoints": out}, warnings


def render(doc: dict[str, Any], source: str) -> str:
    head = f"# edgefleet fleet --export llm-d, from {source} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step: a reader sees the old file or the new one, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
