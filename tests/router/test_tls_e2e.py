"""TLS: a node and a router serving HTTPS with a self-signed certificate (made here with the
``cryptography`` package); the router checks the node's certificate with --node-ca-file."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import httpx
import pytest

from tests.router.conftest import EDGEFLEET, Proc, wait_until
from tests.nodeproc import free_port

pytestmark = pytest.mark.e2e


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _up(url: str, ca: str) -> bool:
    try:
        return httpx.get(url, verify=ssl.create_default_context(cafile=ca), timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def test_https_node_behind_an_https_router(launcher, tmp_path):
    cert, key = _self_signed(tmp_path)
    tls = ["--ssl-certfile", cert, "--ssl-keyfile", key]
    node = launcher.node("tls-node", wait=False, extra=tls)
    node.url = node.url.replace("http://", "https://")
    assert wait_until(lambda: _up(node.url + "/ready", cert), 60), node.log.read_text()[-2000:]
    port = free_port()
    popen, log = launcher._spawn(["route", "--port", str(port), "--node", node.url, "--node-ca-file", cert, *tls],
                                 "tls-router")
    router = Proc(popen, f"https://127.0.0.1:{port}", log, "tls-router")
    launcher.procs.append(router)
    assert wait_until(lambda: _up(router.url + "/ready", cert), 30), log.read_text()[-2000:]
    resp = httpx.post(router.url + "/v1/chat/completions", verify=ssl.create_default_context(cafile=cert),
                      json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                      timeout=30, trust_env=False)
    assert resp.status_code == 200 and resp.headers["x-edgefleet-node"] == "tls-node"
    with pytest.raises(httpx.HTTPError):  # plain HTTP to a TLS port gets nowhere
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False)
