"""``edgefleet fleet --export llm-d``: the endpoints file and its atomic replacement."""

from __future__ import annotations

import threading

import httpx
import yaml
from click.testing import CliRunner

from server.router.cli import fleet
from server.router.export import MODEL_LABEL, NODE_LABEL, llmd_endpoints, render, write_atomic


def fleet_doc(ready_b: bool = True) -> dict:
    def n(name, url, ready, models, zone=None):
        return {"name": name, "url": url, "ready": ready, "zone": zone,
                "capacity": {"identity": {"engine": "sim"}, "models": [{"id": m} for m in models]}}
    return {"nodes": [n("a", "http://10.0.0.5:8000", True, ["llama", "qwen"], zone="lab"),
                      n("b", "http://localhost:9001", ready_b, ["llama"]),
                      n("down", "http://10.0.0.9:8000", False, ["llama"]),
                      n("gone", "http://no-such-host.invalid:8000", True, ["llama"])]}


def _no_dns(monkeypatch):
    import socket

    real = socket.getaddrinfo

    def lookup(host, *a, **kw):  # no DNS in tests: localhost resolves, the rest fails at once
        if host == "localhost":
            return real("127.0.0.1", *a, **kw)
        raise socket.gaierror(f"unknown host {host}")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def test_one_entry_per_ready_node_and_model_with_literal_addresses_and_string_ports(monkeypatch):
    _no_dns(monkeypatch)
    doc, warnings = llmd_endpoints(fleet_doc())
    eps = doc["endpoints"]
    assert [(e["address"], e["port"], e["labels"][MODEL_LABEL]) for e in eps] == [
        ("10.0.0.5", "8000", "llama"), ("10.0.0.5", "8000", "qwen"), ("127.0.0.1", "9001", "llama")]
    assert eps[0]["labels"][NODE_LABEL] == "a" and eps[0]["labels"]["edgefleet.io/zone"] == "lab"
    assert len(warnings) == 1 and "no-such-host.invalid" in warnings[0]  # unresolvable: left out, said
    text = render(doc, "http://router:8080")
    assert 'port: "8000"' in text or "port: '8000'" in text  # a YAML string, not an int
    assert yaml.safe_load(text) == doc


def test_the_file_is_replaced_atomically_under_a_reader(tmp_path):
    out = tmp_path / "endpoints.yaml"
    big = {"endpoints": [{"name": f"n{i}", "address": "10.0.0.1", "port": str(8000 + i), "labels": {}}
                         for i in range(300)]}
    small = {"endpoints": []}
    write_atomic(out, render(small, "x"))
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(out.read_text().count("- name: "))  # a torn file has a count in between

    t = threading.Thread(target=reader)
    t.start()
    for k in range(30):
        write_atomic(out, render(big if k % 2 else small, "x"))
    stop.set()
    t.join()
    assert seen and set(seen) <= {0, 300}  # never a torn file
    assert [p.name for p in tmp_path.iterdir()] == ["endpoints.yaml"]  # no temporary left behind


def test_the_cli_writes_the_file_from_the_routers_fleet(tmp_path, monkeypatch):
    calls = []

    def fake_get(url, headers, **kw):
        calls.append((url, headers))
        return httpx.Response(200, json=fleet_doc(ready_b=False))

    monkeypatch.setattr(httpx, "get", fake_get)
    _no_dns(monkeypatch)
    out = tmp_path / "eps.yaml"
    res = CliRunner().invoke(fleet, ["http://r:8080", "--api-key", "admin", "--export", "llm-d", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert calls == [("http://r:8080/v1/fleet", {"authorization": "Bearer admin"})]
    assert [e["name"] for e in yaml.safe_load(out.read_text())["endpoints"]] == ["a-llama", "a-qwen"]
