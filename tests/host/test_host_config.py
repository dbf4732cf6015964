"""From flags and the TOML file to model entries: --model repeated, --models-dir, [[models]]
tables; one --model stays the single-model node."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from server import node_cli
from server.config import NodeSettings
from server.demo_model import TinyLlamaSpec, build_llama_dir
from server.host_config import build_specs, discover


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake_run(settings, host=None):
        seen["settings"], seen["host"] = settings, host
        return 0

    monkeypatch.setattr(node_cli, "run_node", fake_run)
    return seen


def run(args, env=None):
    return CliRunner().invoke(node_cli.serve, args, env=env or {}, catch_exceptions=False)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    spec = TinyLlamaSpec(hidden_size=64, intermediate_size=128, vocab_size=512)
    build_llama_dir(root / "alpha", spec, model_id="alpha")
    build_llama_dir(root / "nested" / "beta", spec, model_id="beta")
    (root / "alpha" / "sub").mkdir()
    (root / "alpha" / "sub" / "config.json").write_text("{}")  # inside a model: not a model
    (root / "gamma.Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 1020)
    (root / "notes.txt").write_text("x")
    return root


def test_discover_finds_hf_dirs_and_gguf_files(models_dir):
    found = discover(models_dir)
    assert sorted(p.replace(str(models_dir), "") for p in found) == [
        "/alpha", "/gamma.Q4_K_M.gguf", "/nested/beta"]


def test_specs_from_dir_with_names_estimates_and_per_model_tables(models_dir, tmp_path):
    base = NodeSettings(engine="native", kv_cache_gb=0.01, state_dir=tmp_path)
    tables = [{"name": "beta", "keep_alive": "-1", "pinned": True},
              {"model": str(models_dir / "alpha"), "dtype": "float32", "keep-alive": "30s"},
              {"model": str(models_dir / "alpha"), "name": "alpha-long", "max_model_len": 1024}]
    specs = {s.name: s for s in build_specs(base, [], str(models_dir), tables, "5m")}
    assert set(specs) == {"alpha", "beta", "gamma.Q4_K_M", "alpha-long"}
    assert specs["beta"].pinned and specs["beta"].keep_alive_s is None
    assert specs["alpha"].settings.dtype == "float32" and specs["alpha"].keep_alive_s == 30.0
    assert specs["alpha-long"].settings.max_model_len == 1024 and specs["alpha-long"].keep_alive_s == 300.0
    assert specs["gamma.Q4_K_M"].settings.model.endswith(".gguf")  # passed through as a path
    assert specs["gamma.Q4_K_M"].memory_bytes == 1024 + int(0.01 * (1 << 30))
    assert 0 < specs["alpha"].memory_bytes < specs["alpha-long"].memory_bytes * 2
    assert specs["alpha"].max_model_len == 4096 and specs["alpha"].source == "--models-dir"


def test_bad_tables_and_duplicate_names_are_refused(models_dir, tmp_path):
    base = NodeSettings(engine="native", state_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown key"):
        build_specs(base, [], str(models_dir), [{"name": "alpha", "colour": "red"}], "5m")
    with pytest.raises(ValueError, match="keep_alive"):
        build_specs(base, [], str(models_dir), [{"name": "alpha", "keep_alive": "later"}], "5m")
    from server.host import ModelHost

    specs = build_specs(base, [str(models_dir / "alpha")], None, [{"model": "/x", "name": "alpha"}], "5m")
    with pytest.raises(ValueError, match="share the served name alpha"):
        ModelHost(base, specs, budget_bytes=1)


def test_one_model_is_the_single_model_node(captured):
    assert run(["--model", "/some/dir"]).exit_code == 0
    assert captured["host"] is None and captured["settings"].model == "/some/dir"
    assert run([]).exit_code == 0
    assert captured["host"] is None and captured["settings"].model is None


def test_env_model_is_one_path_even_with_spaces(captured):
    assert run([], env={"EDGEFLEET_MODEL": "/models/my model"}).exit_code == 0
    assert captured["host"] is None and captured["settings"].model == "/models/my model"


def test_toml_single_model_string_still_works(tmp_path, captured):
    cfg = tmp_path / "node.toml"
    cfg.write_text('model = "/from/file"\n')
    assert run(["--config", str(cfg)]).exit_code == 0
    assert captured["host"] is None and captured["settings"].model == "/from/file"


def test_two_models_make_a_host(models_dir, tmp_path, captured):
    r = run(["--engine", "native", "--model", str(models_dir / "alpha"), "--model", str(models_dir / "nested/beta"),
             "--keep-alive", "0", "--memory-budget", "1GiB", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    host = captured["host"]
    assert set(host.slots) == {"alpha", "beta"} and host.budget_bytes == 1 << 30
    assert all(s.spec.keep_alive_s == 0 for s in host.slots.values())


def test_models_tables_in_toml_make_a_host(models_dir, tmp_path, captured):
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'engine = "native"\nkeep_alive = "2m"\n[[models]]\nmodel = "{models_dir / "alpha"}"\n'
                   'pinned = true\n')
    assert run(["--config", str(cfg), "--state-dir", str(tmp_path)]).exit_code == 0
    (slot,) = captured["host"].slots.values()
    assert slot.spec.pinned and slot.spec.keep_alive_s == 120.0


def test_bad_host_options_are_usage_errors(models_dir, captured):
    r = CliRunner().invoke(node_cli.serve, ["--models-dir", str(models_dir), "--keep-alive", "soon"])
    assert r.exit_code == 2 and "keep_alive" in r.output
    r = CliRunner().invoke(node_cli.serve, ["--models-dir", str(models_dir), "--memory-budget", "lots"])
    assert r.exit_code == 2 and "memory size" in r.output


def test_served_model_name_with_several_models_is_a_usage_error(models_dir, captured):
    r = CliRunner().invoke(node_cli.serve, ["--models-dir", str(models_dir), "--served-model-name", "x"])
    assert r.exit_code == 2 and "[[models]]" in r.output
