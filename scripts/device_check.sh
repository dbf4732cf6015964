#!/usr/bin/env bash
# The whole GPU check of a device session, as one command (about 5 minutes on one H200):
# kernel tests and timings, the native engine's greedy equality and decode graphs on CUDA,
# then the 8B decode benchmark. Prepare here with scripts/device_wheels.sh, then run it
# through the device tool with carry [".whl"], e.g. command "scripts/device_check.sh".
# Results land in benchmarks/results/ and, on the device machine, in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" || exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
python3 -m benchmarks.kernels.gpu_check || status=1
timeout 420 python3 -m benchmarks.native_gpu || status=1
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/native_gpu.* "$OUT"/ 2>/dev/null || true
  tar -C benchmarks/results -czf "$OUT/kernels.tar.gz" kernels 2>/dev/null || true
fi
exit $status
