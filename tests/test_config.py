"""Configuration flows one way: flags > EDGEFLEET_* environment > TOML file > defaults."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import server.node_cli as node_cli


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake_run(settings):
        seen["settings"] = settings
        return 0

    monkeypatch.setattr(node_cli, "run_node", fake_run)
    return seen


def run(args, env=None):
    return CliRunner().invoke(node_cli.serve, args, env=env or {}, catch_exceptions=False)


def test_precedence_flag_over_env_over_file(tmp_path, captured):
    cfg = tmp_path / "node.toml"
    cfg.write_text('port = 7001\nzone = "file-zone"\nname = "file-name"\nmax-num-seqs = 3\n'
                   'label = ["a=1"]\n')
    r = run(["--config", str(cfg), "--port", "7003"], env={"EDGEFLEET_PORT": "7002", "EDGEFLEET_ZONE": "env-zone"})
    assert r.exit_code == 0, r.output
    s = captured["settings"]
    assert s.port == 7003  # flag
    assert s.zone == "env-zone"  # environment over file
    assert s.name == "file-name" and s.max_num_seqs == 3 and s.labels == {"a": "1"}  # file
    assert s.host == "127.0.0.1"  # default


def test_env_config_file_and_key_file(tmp_path, captured):
    cfg = tmp_path / "node.toml"
    cfg.write_text("port = 7100\n")
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    r = run(["--api-key-file", str(key)], env={"EDGEFLEET_CONFIG": str(cfg)})
    assert r.exit_code == 0, r.output
    s = captured["settings"]
    assert s.port == 7100 and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_demo_model_defaults_to_eager_and_engine_options_parse(captured):
    assert run(["--engine-option", "decode_ms=20", "--engine-option", "name=x"]).exit_code == 0
    s = captured["settings"]
    assert s.enforce_eager is True and s.engine_options == {"decode_ms": 20, "name": "x"}
    assert run(["--model", "/some/dir"]).exit_code == 0
    assert captured["settings"].enforce_eager is False


def test_bad_values_are_usage_errors(captured):
    r = CliRunner().invoke(node_cli.serve, ["--port", "notaport"])
    assert r.exit_code == 2 and "port" in r.output.lower()
    r = CliRunner().invoke(node_cli.serve, ["--label", "novalue"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_toml_tables_for_labels_and_engine_options(tmp_path, captured):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[labels]\nrack = "r2"\ngpu = "4090"\n\n[engine_options]\ndecode_ms = 12.5\n')
    assert run(["--config", str(cfg)]).exit_code == 0
    s = captured["settings"]
    assert s.labels == {"rack": "r2", "gpu": "4090"} and s.engine_options == {"decode_ms": 12.5}
