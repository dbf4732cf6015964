"""Node settings: one frozen object, filled flags > EDGEFLEET_* environment > TOML file.

The precedence is implemented by click (command line, then ``envvar``, then the
``default_map`` loaded from the TOML file); this module only defines the shape.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

EngineName = Literal["vllm", "native", "sim"]


class NodeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Local Hugging Face directory or hub id; none: the demo model")
    served_model_name: str | None = None
    engine: EngineName = "vllm"
    dtype: str = "auto"
    quantization: str | None = None
    max_model_len: int | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: SecretStr | None = None
    insecure: bool = False
    name: str | None = None
    zone: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    max_queued_requests: int = 256
    max_queue_wait: float | None = None  # seconds of predicted wait before 503
    shutdown_timeout: float = 30.0
    max_n: int = 8
    max_body_bytes: int = 4 * 1024 * 1024
    header_timeout: float = 30.0  # transport deadlines and cap: server/transport.py
    body_timeout: float = 30.0
    max_connections: int = 1000  # 0: no cap
    ssl_certfile: str | None = None  # TLS: both given, the node serves HTTPS (server/transport.py)
    ssl_keyfile: str | None = None
    max_num_seqs: int = 32
    tool_call_parser: str = "hermes"
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.85
    kv_cache_gb: float | None = None  # CPU engines: KV cache size
    advertise: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    state_dir: Path | None = None
    log_level: str = "info"
    engine_options: dict[str, Any] = Field(default_factory=dict)  # engine-specific extras (e.g. sim)


@functools.lru_cache(maxsize=256)  # asked on every request (Host/Origin checks)
def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_toml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a config file; keys may use dashes or underscores."""
    if not path:
        return {}
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return {k.replace("-", "_"): v for k, v in data.items()}


def read_key_file(path: str) -> str:
    key = Path(path).read_text().strip()
    if not key:
        raise ValueError(f"API key file {path} is empty")
    return key


def state_dir(settings: NodeSettings) -> Path:
    if settings.state_dir:
        return settings.state_dir
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "edgefleet"
