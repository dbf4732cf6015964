"""``edgefleet serve`` with several models: from the parsed options to a ModelHost."""

from __future__ import annotations

import logging
from typing import Any

from server.config import NodeSettings
from server.host import ModelHost
from server.host_config import build_specs, memory_budget
from server.host_policy import GiB, format_keep_alive, parse_bytes

log = logging.getLogger("edgefleet.host")


def build_host(settings: NodeSettings, models: list[str], tables: list[dict[str, Any]], *, models_dir: str | None,
               keep_alive: str, load_timeout: float, memory_budget: str | None = None,
               eager_given: bool = True) -> ModelHost:
    entries: list[str | None] = list(models)
    if not entries and not models_dir and not tables:
        entries = [None]  # the demo model
    if settings.served_model_name:
        raise ValueError("--served-model-name names one model; with several, give each its name in a [[models]] "
                         "table (name = ...)")
    specs = build_specs(settings, entries, models_dir, tables, keep_alive)
    if not eager_given:  # the demo model's speed is irrelevant; its start time is not (as with one model)
        for spec in specs:
            if spec.settings.model is None:
                spec.settings = spec.settings.model_copy(update={"enforce_eager": True})
    budget, source = _budget(settings, memory_budget)
    if load_timeout <= 0:
        raise ValueError("--load-timeout must be positive")
    for spec in specs:
        log.info("model %s: %s, %s engine, ~%.2f GiB, keep_alive %s%s", spec.name, spec.settings.model or "demo",
                 spec.settings.engine, spec.memory_bytes / GiB, format_keep_alive(spec.keep_alive_s),
                 ", pinned" if spec.pinned else "")
    return ModelHost(settings, specs, budget_bytes=budget, budget_source=source, load_timeout=load_timeout)


def _budget(settings: NodeSettings, value: str | None) -> tuple[int, str]:
    return memory_budget(settings, parse_bytes(value) if value else None)
