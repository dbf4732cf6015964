"""Trust in the fleet (RELIABILITY G1-G3): who the router admits from mDNS, and how far it
believes a capacity document. Real router and node processes on loopback, real mDNS, and
rogue announcers that are plain sockets recording everything the router sends them."""

from __future__ import annotations

import math
import socketserver
import threading
import time

import httpx
import pytest

from server.fleet_proof import CHALLENGE_HEADER, NODE_ID_HEADER, PROOF_HEADER, proof
from server.router.discovery import NodeAdvertiser
from server.router.policy import estimate
from server.router.trust import BOUNDS, address_refusal, bound_capacity, parse_networks
from tests.router.conftest import fleet, wait_until
from tests.router.helpers import capacity, node

KEY = "fleet-node-key-0123456789abcdef"


# --- address policy (G2) --------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://[::1]:8000", "http://169.254.169.254:80",
                                 "http://[fe80::1]:8000", "http://0.0.0.0:8000", "http://224.0.0.251:8000",
                                 "http://node.local:8000"])
def test_loopback_link_local_and_names_are_refused_by_default(url):
    assert address_refusal(url, ()) is not None


def test_lan_addresses_pass_and_an_allow_list_is_exact():
    assert address_refusal("http://192.168.1.20:8000", ()) is None
    allowed = parse_networks(["10.0.0.0/24", "127.0.0.1"])
    assert address_refusal("http://127.0.0.1:8000", allowed) is None
    assert address_refusal("http://10.0.0.9:8000", allowed) is None
    assert "outside" in address_refusal("http://192.168.1.20:8000", allowed)
    assert "outside" in address_refusal("http://127.0.0.2:8000", allowed)
    with pytest.raises(ValueError, match="not an address or CIDR"):
        parse_networks(["10.0.0.0/33"])


# --- capacity bounds (G3) -------------------------------------------------------------------

def test_absurd_capacity_figures_are_clamped_and_nan_rejected():
    cap = capacity(prefill_tps=1e300, tpot_ms=-5.0, wait_ms=-1e9, running=-3, slots=10**9)
    cap.load.waiting = -7
    bound_capacity(cap)
    assert cap.performance.prefill_tokens_per_s == BOUNDS.prefill_tokens_per_s[1]
    assert cap.performance.tpot_p50_ms == BOUNDS.step_ms[0]
    assert cap.prediction.predicted_queue_wait_ms == 0.0
    assert cap.load.running == 0 and cap.load.waiting == 0
    assert cap.load.max_concurrent_sequences == BOUNDS.slots[1]
    # The prediction cannot promise a prefill faster than the capped rate.
    assert cap.prediction.predicted_ttft_ms >= 512 * 1000.0 / BOUNDS.prefill_tokens_per_s[1]
    bad = capacity()
    bad.performance.prefill_tokens_per_s = math.nan
    with pytest.raises(ValueError, match="NaN"):
        bound_capacity(bad)
    inf = capacity(prefill_tps=math.inf)
    assert bound_capacity(inf).performance.prefill_tokens_per_s == BOUNDS.prefill_tokens_per_s[1]


def test_an_absurd_report_cannot_promise_zero_time():
    """Unbounded, 1e300 tokens/s and a negative wait make a 100k-token prompt cost the rogue
    nothing but its RTT, so it would win every long request; bounded, it pays at least the
    capped prefill rate."""
    raw = node("http://10.0.0.66:1", rtt_ms=5.0, prefill_tps=1e300, wait_ms=-1e9)
    assert estimate(raw, 100_000).ttft_ms < 5.001
    rogue = node("http://10.0.0.66:1", rtt_ms=5.0)
    rogue.on_poll(bound_capacity(capacity(prefill_tps=1e300, wait_ms=-1e9)), 5.0, 0.0)
    est = estimate(rogue, 100_000)
    assert est.ttft_ms >= 5.0 + 100_000 * 1000.0 / BOUNDS.prefill_tokens_per_s[1]
    assert est.wait_ms >= 0


# --- admission (G1) with real processes -----------------------------------------------------

class Rogue:
    """An HTTP/1.1 peer that records every request. ``relay_to``: answer /health by
    forwarding the request (challenge included) to a real node and copying its proof."""

    def __init__(self, relay_to: str | None = None, node_id: str = "feedfacefeedface"):
        self.requests: list[bytes] = []
        rogue = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    while line := self.rfile.readline():
                        head = [line]
                        while (h := self.rfile.readline()) not in (b"\r\n", b""):
                            head.append(h)
                        raw = b"".join(head)
                        rogue.requests.append(raw)
                        extra = rogue.relay(raw) if relay_to else (
                            f"{PROOF_HEADER}: {'0' * 64}\r\n{NODE_ID_HEADER}: {node_id}\r\n".encode())
                        body = b'{"status": "ok"}'
                        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%scontent-length: %d"
                                         b"\r\n\r\n%s" % (extra, len(body), body))
                except OSError:
                    pass

        self.relay_to = relay_to
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.node_id = node_id
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.adv = NodeAdvertiser("rogue", node_id, "127.0.0.1", self.port, interfaces=["127.0.0.1"])

    def relay(self, raw: bytes) -> bytes:
        headers = {}
        for h in raw.split(b"\r\n")[1:]:
            if b":" in h:
                k, v = h.split(b":", 1)
                headers[k.strip().decode().lower()] = v.strip().decode()
        r = httpx.get(self.relay_to + "/health", headers={CHALLENGE_HEADER: headers.get(CHALLENGE_HEADER, "")},
                      timeout=5)
        self.node_id = r.headers.get(NODE_ID_HEADER, "")
        return f"{PROOF_HEADER}: {r.headers.get(PROOF_HEADER, '')}\r\n{NODE_ID_HEADER}: {self.node_id}\r\n".encode()

    def saw_secret_or_prompt(self) -> bool:
        return any(b"authorization" in r.lower() or not r.startswith(b"GET /health ") for r in self.requests)

    def close(self) -> None:
        self.adv.stop()
        self.server.shutdown()
        self.server.server_close()


def metric(router, name: str, reason: str) -> float:
    text = httpx.get(router.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'{name}_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_node_must_prove_the_key_before_it_gets_it_or_a_prompt(launcher):
    key_file = launcher.tmp / "trust.key"
    key_file.write_text(KEY + "\n")
    router = launcher.router("--discover", "--discover-interface", "127.0.0.1", "--poll-interval", "0.3",
                             "--discovery-allow-network", "127.0.0.0/8", "--discovered-node-key-file", str(key_file),
                             name="r-trust", wait_ready=False)
    real = launcher.node("trusted", extra=["--advertise", "--api-key", KEY])
    forger = Rogue()
    forger.adv.start()
    relay = None
    try:
        assert wait_until(lambda: any(n["name"] == "trusted" and n["ready"] for n in fleet(router)["nodes"]),
                          timeout=20)
        # A relay: forwards the router's challenge to the real node and returns its proof.
        # It announces the real node's id, so only the address binding can catch it.
        real_id = httpx.get(real.url + "/health", headers={CHALLENGE_HEADER: "x"}, timeout=5).headers[NODE_ID_HEADER]
        relay = Rogue(relay_to=real.url, node_id=real_id)
        relay.adv.start()
        assert wait_until(lambda: forger.requests and relay.requests and metric(
            router, "edgefleet_router_discovery_refused", "proof") >= 2, timeout=15)
        time.sleep(1.0)  # time for a wrong admission to show up in the fleet, had there been one
        urls = {n["url"] for n in fleet(router)["nodes"]}
        assert urls == {real.url}
        for rogue in (forger, relay):
            assert rogue.requests and not rogue.saw_secret_or_prompt(), rogue.requests
            assert all(CHALLENGE_HEADER.encode() in r.lower() for r in rogue.requests)
        assert relay.node_id == real_id  # the real node answered the relayed challenge, bound to its own address
        r = httpx.post(router.url + "/v1/chat/completions", timeout=10,
                       json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
        assert r.status_code == 200 and r.headers["x-edgefleet-node"] == "trusted"
        log = (launcher.tmp / "r-trust.log").read_text()
        assert f"127.0.0.1:{forger.port}: wrong proof" in log and f"127.0.0.1:{relay.port}: wrong proof" in log
    finally:
        forger.close()
        if relay is not None:
            relay.close()


def test_loopback_announcements_are_refused_unless_allowed(launcher):
    """The same keyed node, announced on loopback, with no --discovery-allow-network."""
    key_file = launcher.tmp / "trust2.key"
    key_file.write_text(KEY + "\n")
    router = launcher.router("--discover", "--discover-interface", "127.0.0.1", "--poll-interval", "0.3",
                             "--discovered-node-key-file", str(key_file), name="r-loopback", wait_ready=False)
    launcher.node("loop-node", extra=["--advertise", "--api-key", KEY])
    assert wait_until(lambda: metric(router, "edgefleet_router_discovery_refused", "address") >= 1, timeout=15)
    assert fleet(router)["nodes"] == []
    assert "loopback address (allow it with --discovery-allow-network)" in (launcher.tmp / "r-loopback.log").read_text()


def test_proof_is_bound_to_key_nonce_node_and_address():
    base = proof(KEY, "n1", "id", "10.0.0.5", 8000)
    assert base == proof(KEY, "n1", "id", "10.0.0.5", 8000)
    assert len({base, proof(KEY + "x", "n1", "id", "10.0.0.5", 8000), proof(KEY, "n2", "id", "10.0.0.5", 8000),
                proof(KEY, "n1", "id2", "10.0.0.5", 8000), proof(KEY, "n1", "id", "10.0.0.6", 8000),
                proof(KEY, "n1", "id", "10.0.0.5", 8001)}) == 6
    assert proof(KEY, "n", "i", "::1", 1) == proof(KEY, "n", "i", "[0:0:0:0:0:0:0:1]", 1)


def test_cli_refuses_a_bad_network(tmp_path):
    from click.testing import CliRunner

    from server.router.cli import route

    r = CliRunner().invoke(route, ["--discover", "--discovery-allow-network", "10.0.0.0/99"])
    assert r.exit_code == 2 and "not an address or CIDR" in r.output

