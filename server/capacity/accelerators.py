"""Accelerator facts from NVML (nvidia-ml-py's ``pynvml``), with clean CPU-only and
unified-memory fallbacks. NVML is initialised once; a node without it reports its CPU."""

from __future__ import annotations

import logging
import platform
import threading
import time

import psutil

from server.capacity.schema import Accelerator

log = logging.getLogger("edgefleet.capacity")


class AcceleratorProbe:
    """Reads NVML at most every ``ttl_s`` so a router polling every second costs ~nothing."""

    def __init__(self, ttl_s: float = 1.0):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: list[Accelerator] = []
        self._at = 0.0
        self._nvml = self._init_nvml()

    @staticmethod
    def _init_nvml():
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() == 0:
                return None
            return pynvml
        except Exception:  # no driver, no library: a CPU-only node
            return None

    @property
    def cpu_only(self) -> bool:
        return self._nvml is None

    def read(self) -> list[Accelerator]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.ttl_s or not self._cached:
                self._cached = self._read_nvml() if self._nvml else [self._cpu()]
                self._at = now
            return list(self._cached)

    @staticmethod
    def _cpu() -> Accelerator:
        vm = psutil.virtual_memory()
        return Accelerator(index=0, kind="cpu", name=platform.processor() or platform.machine() or "cpu",
                           memory_total_bytes=vm.total, memory_used_bytes=vm.total - vm.available,
                           memory_free_bytes=vm.available, unified_memory=True,
                           utilization_pct=psutil.cpu_percent(interval=None))

    def _read_nvml(self) -> list[Accelerator]:
        nv = self._nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            acc = Accelerator(index=i, kind="gpu", name=_safe(lambda: _text(nv.nvmlDeviceGetName(h))) or "gpu")
            mem = _safe(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            if mem is not None and getattr(mem, "total", 0):
                acc.memory_total_bytes, acc.memory_used_bytes, acc.memory_free_bytes = mem.total, mem.used, mem.free
            else:  # GB10 / unified memory: NVML reports N/A, the GPU shares system memory
                vm = psutil.virtual_memory()
                acc.unified_memory = True
                acc.memory_total_bytes, acc.memory_free_bytes = vm.total, vm.available
                acc.memory_used_bytes = vm.total - vm.available
            util = _safe(lambda: nv.nvmlDeviceGetUtilizationRates(h))
            acc.utilization_pct = float(util.gpu) if util is not None else None
            acc.temperature_c = _safe(lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
            acc.power_draw_w = _safe(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
            acc.power_limit_w = _safe(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            out.append(acc)
        return out


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _safe(fn):
    try:
        return fn()
    except Exception:  # NVML raises NotSupported for fields a board lacks
        return None
