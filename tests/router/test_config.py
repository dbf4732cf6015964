"""Fleet file parsing and client-key hashing."""

import pytest

from server.edge.security import hash_key
from server.router.config import keys_from_fleet, load_fleet
from server.router.registry import normalize_url


def test_fleet_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BOX_KEY", "node-secret")
    digest = hash_key("client-secret")
    path = tmp_path / "fleet.toml"
    path.write_text(f'''
[router]
policy = "round_robin"

[[nodes]]
url = "http://127.0.0.1:9001/v1"
name = "a"
api_key_env = "BOX_KEY"
zone = "garage"
labels = {{ gpu = "none" }}

[[keys]]
id = "alice"
hash = "{digest}"
requests_per_min = 5
''')
    fleet = load_fleet(path)
    spec = fleet.nodes[0].spec()
    assert spec.url == "http://127.0.0.1:9001" and spec.api_key == "node-secret" and spec.zone == "garage"
    keys, limits = keys_from_fleet(fleet)
    assert keys[0].key_id == "alice" and keys[0].digest == digest
    assert limits["alice"].requests_per_min == 5 and fleet.router["policy"] == "round_robin"


def test_plain_key_in_fleet_file_is_rejected(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[[keys]]\nid = "bob"\nhash = "client-secret"\n')
    with pytest.raises(ValueError):
        load_fleet(path)


def test_normalize_url():
    assert normalize_url("http://h:1/") == "http://h:1"
    with pytest.raises(ValueError):
        normalize_url("file:///etc/passwd")


@pytest.mark.parametrize("content", [None, ""])
def test_discovered_node_key_file_missing_or_empty_is_a_usage_error(tmp_path, content):
    from click.testing import CliRunner

    from server.router.cli import route

    path = tmp_path / "node.key"
    if content is not None:
        path.write_text(content)
    r = CliRunner().invoke(route, ["--discovered-node-key-file", str(path)])
    assert r.exit_code == 2 and "--discovered-node-key-file" in r.output


def test_credentials_in_node_urls_are_refused_at_config_time_and_never_echoed(tmp_path):
    from click.testing import CliRunner

    from server.router.cli import route

    with pytest.raises(ValueError, match="must not carry credentials") as err:
        normalize_url("http://admin:hunter2@10.0.0.5:8000")
    assert "hunter2" not in str(err.value) and "admin" not in str(err.value) and "10.0.0.5:8000" in str(err.value)
    r = CliRunner().invoke(route, ["--node", "http://admin:hunter2@10.0.0.5:8000"])
    assert r.exit_code == 2 and "must not carry credentials" in r.output and "hunter2" not in r.output
    path = tmp_path / "fleet.toml"
    path.write_text('[[nodes]]\nurl = "http://admin:hunter2@10.0.0.5:8000"\n')
    r = CliRunner().invoke(route, ["--fleet", str(path)])
    assert r.exit_code == 2 and "must not carry credentials" in r.output and "hunter2" not in r.output
    r = CliRunner().invoke(route, ["--node", "http://tok@10.0.0.5:8000"])  # a user part alone is a credential too
    assert r.exit_code == 2 and "tok@" not in r.output
