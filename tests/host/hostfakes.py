"""Fake engines for the model host's unit tests: each counts its starts and stops."""

from __future__ import annotations

import asyncio

from server.config import NodeSettings
from server.engine.base import ModelInfo
from server.host import ModelHost, ModelSpec
from server.host_policy import GiB
from tests.fakes import ScriptedEngine


class CountingEngine(ScriptedEngine):
    def __init__(self, model_id: str, log: list[str], *, start_s: float = 0.0, fail: str | None = None,
                 can_sleep: bool = False):
        super().__init__(tokens=3, step_s=0.0)
        self._info = ModelInfo(id=model_id, root=f"/models/{model_id}", max_model_len=256, dtype="float32")
        self.log, self.start_s, self.fail, self.can_sleep = log, start_s, fail, can_sleep
        self.running = False

    async def start(self, progress=None) -> None:
        self.log.append(f"start {self._info.id}")
        await asyncio.sleep(self.start_s)
        if self.fail:
            raise RuntimeError(self.fail)
        self.running = True

    async def stop(self) -> None:
        self.log.append(f"stop {self._info.id}")
        self.running = False

    async def sleep(self) -> None:
        self.log.append(f"sleep {self._info.id}")

    async def wake_up(self) -> None:
        self.log.append(f"wake {self._info.id}")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_host(tmp_path, models: dict[str, dict], *, budget_gib: float = 10.0, load_timeout: float = 5.0,
              clock=None, host: str = "127.0.0.1") -> tuple[ModelHost, list[str], dict[str, CountingEngine]]:
    """``models``: name -> {gib, keep_alive, pinned, start_s, fail, can_sleep}."""
    log: list[str] = []
    engines: dict[str, CountingEngine] = {}
    base = NodeSettings(engine="sim", state_dir=tmp_path, host=host, max_num_seqs=4)
    specs = [ModelSpec(name=name, settings=base.model_copy(update={"served_model_name": name}),
                       keep_alive_s=m.get("keep_alive", 300.0), pinned=m.get("pinned", False),
                       memory_bytes=int(m.get("gib", 1.0) * GiB), max_model_len=256) for name, m in models.items()]

    def factory(settings: NodeSettings) -> CountingEngine:
        m = models[settings.served_model_name]
        e = CountingEngine(settings.served_model_name, log, start_s=m.get("start_s", 0.0), fail=m.get("fail"),
                           can_sleep=m.get("can_sleep", False))
        engines[settings.served_model_name] = e
        return e

    kw = {"clock": clock} if clock is not None else {}
    h = ModelHost(base, specs, budget_bytes=int(budget_gib * GiB), budget_source="test", load_timeout=load_timeout,
                  engine_factory=factory, **kw)
    return h, log, engines


def request(runtime, rid: str = "r1"):
    """Begin a request on a model's runtime the way Generation does; returns a finisher."""
    runtime.admit(4, 1)
    runtime.begin(rid, [rid + "-0"], 4, 0.0)
    return lambda: runtime.end(rid, "abort")
