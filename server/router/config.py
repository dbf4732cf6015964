"""Router configuration: the fleet file (TOML) and the frozen settings built from flags.

Fleet file::

    [router]                      # optional; flags override
    policy = "nearest_idle"
    poll_interval = 1.0

    [[nodes]]
    url = "http://10.0.0.5:8000"
    name = "box-a"                # optional; default host:port, later the node's own name
    api_key_env = "BOX_A_KEY"     # key the router presents to this node: api_key, api_key_env or api_key_file
    zone = "garage"
    labels = { gpu = "4090" }

    [[keys]]                      # client keys, stored hashed (edgefleet route --hash-key)
    id = "alice"
    hash = "sha256:9f86d0..."
    requests_per_min = 60
    tokens_per_min = 200000
    max_concurrent = 4
    priority_default = 10         # optional: priority when a request gives none (lower runs first)
    priority_min = 0              # optional: the most urgent priority this key may ask for (clamped)
    admin = false                 # optional: true lets this key see fleet internals (docs/router.md)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.edge.security import ApiKey, KeyStore, hash_key
from server.router.limits import KeyLimits
from server.router.registry import NodeSpec, normalize_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # errors never echo keys or URLs


class FleetNode(_Strict):
    url: str
    name: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    zone: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return normalize_url(v)

    def spec(self) -> NodeSpec:
        key = self.api_key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env) or None
            if key is None:
                raise ValueError(f"node {self.url}: environment variable {self.api_key_env} is not set")
        if self.api_key_file:
            key = Path(self.api_key_file).read_text().strip()
        return NodeSpec(url=self.url, name=self.name, api_key=key, zone=self.zone, labels=dict(self.labels))


class FleetKey(_Strict):
    id: str = Field(min_length=1, max_length=64)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    requests_per_min: int | None = Field(None, ge=1)
    tokens_per_min: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    priority_default: int | None = Field(None, ge=-100, le=100)
    priority_min: int | None = Field(None, ge=-100, le=100)
    admin: bool = False  # sees fleet internals: node URLs, /v1/fleet, /metrics, every key's usage


class FleetFile(_Strict):
    router: dict[str, Any] = Field(default_factory=dict)
    nodes: list[FleetNode] = Field(default_factory=list)
    keys: list[FleetKey] = Field(default_factory=list)


def load_fleet(path: str | os.PathLike[str]) -> FleetFile:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    fleet = FleetFile.model_validate(data)
    ids = [k.id for k in fleet.keys]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate key id in fleet file")
    return fleet


@dataclass(slots=True)
class RouterSettings:
    nodes: list[NodeSpec] = field(default_factory=list)
    policy: str = "nearest_idle"
    seed: int | None = None
    poll_interval: float = 1.0
    connect_timeout: float = 1.0
    first_byte_timeout: float = 10.0  # until the node's response headers
    read_timeout: float = 300.0  # between two chunks once streaming
    total_deadline: float = 30.0  # for all attempts before the first byte
    max_attempts: int = 3
    failure_threshold: int = 3
    success_threshold: int = 2
    open_s: float = 2.0
    discover: bool = False
    discover_interfaces: list[str] | None = None
    discovered_node_key: str | None = field(default=None, repr=False)  # presented to nodes found over mDNS
    discovery_allow_networks: tuple[str, ...] = ()  # CIDRs discovered nodes may be in (server/router/trust.py)
    host: str = "127.0.0.1"
    port: int = 8080
    keys: KeyStore = field(default_factory=KeyStore)
    limits: dict[str, KeyLimits] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 << 20
    max_response_bytes: int = 64 << 20  # a node's response body (server/router/upstream.py)
    audit_log: str | None = None
    log_prompts: bool = False
    default_max_tokens: int = 256  # for scoring when a request sets none
    # The store (server/router/persist.py): idempotency results, limit windows and usage.
    state_dir: str | None = None  # SQLite here; in memory when None
    store_url: str | None = None  # redis://host:port/db: shared by several routers
    idempotency_ttl: float = 86_400.0
    idempotency_max_bytes: int = 1 << 20
    store_max_entries: int = 10_000
    store_max_bytes: int = 1 << 30
    limits_flush_interval: float = 1.0
    node_ca_file: str | None = None  # CA bundle for https:// nodes (default: the system's)
    shutdown_timeout: float = 30.0  # SIGTERM: seconds in-flight requests may finish (server/router/core.py drain)
    first_byte_ttft_factor: float = 3.0  # first-byte deadline >= this x the node's predicted TTFT


def keys_from_fleet(fleet: FleetFile) -> tuple[list[ApiKey], dict[str, KeyLimits]]:
    keys = [ApiKey(k.id, k.hash, admin=k.admin) for k in fleet.keys]
    limits = {k.id: KeyLimits(k.requests_per_min, k.tokens_per_min, k.max_concurrent,
                                k.priority_default, k.priority_min) for k in fleet.keys}
    return keys, limits


__all__ = ["FleetFile", "FleetKey", "FleetNode", "RouterSettings", "hash_key", "keys_from_fleet", "load_fleet"]
