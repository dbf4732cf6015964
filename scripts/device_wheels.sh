#!/usr/bin/env bash
# Wheels a GPU device session needs beside its image (which has torch, triton, transformers,
# tokenizers, safetensors, numpy, httpx, pytest, but not pydantic): downloaded here into
# .whl/ (git-ignored), carried with the working tree, installed there by
# scripts/device_check.sh. Versions follow this checkout's .venv when it has one.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
pkgs=()
for name in pydantic pydantic_core annotated_types typing_inspection; do
  v=$("$py" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  pkgs+=("${name//_/-}${v:+==$v}")
done
mkdir -p .whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pkgs[@]}"
ls -1 .whl
