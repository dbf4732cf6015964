"""The model host's decisions, as pure functions: keep_alive durations, and what to evict
so that a model fits in the node's memory budget.

Nothing here touches an engine or the clock; :mod:`server.host` feeds it snapshots, and the
unit tests feed it fakes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

GiB = 1 << 30
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$", re.IGNORECASE)


def parse_keep_alive(value: str | float | None) -> float | None:
    """Ollama's keep_alive: a duration (``5m``, ``30s``, ``1h``, a bare number of seconds),
    ``0`` = unload as soon as the last request finishes, any negative value = never.

    Returns seconds, or ``None`` for "never". Raises ValueError on anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a duration like 5m, 0 or -1, not {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            raise ValueError("keep_alive is out of range") from None
    else:
        m = _DURATION.match(str(value).lower())
        if not m:
            raise ValueError(f"keep_alive must be a duration like 5m, 30s, 1h, 0 or -1, not {value!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"keep_alive must be finite, not {value!r}")
    return None if seconds < 0 else seconds


def format_keep_alive(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:g}s"


def parse_bytes(value: str | float) -> int:
    """``8GiB``, ``512m``, ``2g`` or a number of bytes (binary units: 1g = 1 GiB)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"memory size must look like 8GiB, 512MiB or a byte count, not {value!r}")
    unit = (m.group(2) or "b").lower()[0]
    return int(float(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit])


@dataclass(slots=True)
class Resident:
    """One model that holds memory now (loaded, loading or sleeping), as placement sees it."""

    name: str
    memory_bytes: int
    pinned: bool
    busy: bool  # requests running or waiting on it, or a load in progress
    last_used: float  # monotonic; lower = idle longer


@dataclass(slots=True)
class Placement:
    fits: bool
    evict: list[str]  # least recently used first
    reason: str


def place(name: str, need_bytes: int, budget_bytes: int, residents: list[Resident]) -> Placement:
    """Can ``name`` (needing ``need_bytes``) be loaded? If memory is short, which idle,
    unpinned models go first (least recently used first)? Busy and pinned models are never
    chosen. If even evicting every candidate leaves too little, nothing is evicted and the
    reason names what does not fit and what holds the memory."""
    others = [r for r in residents if r.name != name]
    used = sum(r.memory_bytes for r in others)
    if need_bytes > budget_bytes:
        return Placement(False, [], f"model '{name}' needs {need_bytes / GiB:.2f} GiB, more than this node's "
                                    f"whole budget of {budget_bytes / GiB:.2f} GiB")
    free = budget_bytes - used
    if need_bytes <= free:
        return Placement(True, [], f"fits: needs {need_bytes / GiB:.2f} GiB of {free / GiB:.2f} GiB free")
    evictable = sorted((r for r in others if not r.pinned and not r.busy), key=lambda r: r.last_used)
    chosen: list[str] = []
    for r in evictable:
        chosen.append(r.name)
        free += r.memory_bytes
        if need_bytes <= free:
            return Placement(True, chosen, f"fits after evicting {', '.join(chosen)} (least recently used first)")
    held = ", ".join(f"{r.name} ({r.memory_bytes / GiB:.2f} GiB, {'pinned' if r.pinned else 'busy'})"
                     for r in others if r.pinned or r.busy) or "nothing"
    return Placement(False, [], f"model '{name}' needs {need_bytes / GiB:.2f} GiB; the budget is "
                                f"{budget_bytes / GiB:.2f} GiB and models that cannot be evicted hold "
                                f"{sum(r.memory_bytes for r in others if r.pinned or r.busy) / GiB:.2f} GiB: {held}")


def idle_expired(keep_alive_s: float | None, pinned: bool, busy: bool, idle_since: float, now: float) -> bool:
    """True when a loaded model should be unloaded (or put to sleep) for being idle."""
    if pinned or busy or keep_alive_s is None:
        return False
    return now - idle_since >= keep_alive_s


def backoff_s(failures: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Seconds a failed model waits before a request may retry its load: 2, 4, 8 ... 300."""
    return min(cap, base * (2 ** max(0, failures - 1)))
