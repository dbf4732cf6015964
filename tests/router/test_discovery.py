"""mDNS discovery on this machine (loopback): register, browse, goodbye on stop."""

import asyncio

import pytest

from server.router.discovery import NodeAdvertiser, NodeBrowser


async def wait_for(pred, timeout: float = 8.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_advertised_node_is_found_and_removed():
    added, removed = [], []
    browser = NodeBrowser(added.append, removed.append, interfaces=["127.0.0.1"])
    await browser.start()
    adv = NodeAdvertiser("disc-test", "0123456789abcdef", "127.0.0.1", 18555, zone="lab", interfaces=["127.0.0.1"])
    try:
        await asyncio.to_thread(adv.start)
        assert await wait_for(lambda: any(s.url == "http://127.0.0.1:18555" for s in added))
        spec = next(s for s in added if s.url == "http://127.0.0.1:18555")
        assert spec.source == "mdns" and spec.zone == "lab" and spec.node_id == "0123456789abcdef"
        assert spec.name == "disc-test"
        await asyncio.to_thread(adv.stop)
        assert await wait_for(lambda: "http://127.0.0.1:18555" in removed)
    finally:
        adv.stop()
        await browser.stop()


@pytest.mark.e2e
def test_router_discovers_advertised_node_process(launcher):
    import httpx
    import openai

    from tests.router.conftest import fleet, wait_until

    # No node key: only an explicitly allowed network is trusted (loopback is refused by default).
    router = launcher.router("--discover", "--discover-interface", "127.0.0.1", "--poll-interval", "0.3",
                             "--discovery-allow-network", "127.0.0.0/8", name="r-mdns", wait_ready=False)
    node = launcher.node("mdns-node", extra=["--advertise", "--zone", "lan"])
    assert wait_until(lambda: any(n["name"] == "mdns-node" and n["ready"] for n in fleet(router)["nodes"]),
                      timeout=15)
    entry = next(n for n in fleet(router)["nodes"] if n["name"] == "mdns-node")
    assert entry["source"] == "mdns" and entry["zone"] == "lan" and entry["url"] == node.url
    c = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="sim-model", messages=[{"role": "user", "content": "x"}],
                                                      max_tokens=1)
    assert raw.headers["x-edgefleet-node"] == "mdns-node"
    node.stop()  # SIGTERM: the node sends an mDNS goodbye
    assert wait_until(lambda: not any(n["name"] == "mdns-node" for n in fleet(router)["nodes"]), timeout=15)
    assert httpx.get(router.url + "/ready", trust_env=False).status_code == 503


def test_discovered_nodes_get_the_configured_node_key(launcher):
    """A LAN fleet whose nodes share one --api-key: the router presents it to nodes it finds."""
    import openai

    from tests.router.conftest import fleet, wait_until

    key_file = launcher.tmp / "node.key"
    key_file.write_text("lan-node-key-0123456789\n")
    router = launcher.router("--discover", "--discover-interface", "127.0.0.1", "--poll-interval", "0.3",
                             "--discovery-allow-network", "127.0.0.1/32",
                             "--discovered-node-key-file", str(key_file), name="r-mdns-key", wait_ready=False)
    launcher.node("mdns-keyed", extra=["--advertise", "--api-key", "lan-node-key-0123456789"])
    # Admitted only after proving the key; capacity polls carry the key too.
    assert wait_until(lambda: any(n["name"] == "mdns-keyed" and n["ready"] for n in fleet(router)["nodes"]),
                      timeout=15)
    c = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="sim-model", messages=[{"role": "user", "content": "x"}],
                                                      max_tokens=1)
    assert raw.headers["x-edgefleet-node"] == "mdns-keyed"
    assert "lan-node-key" not in str(fleet(router))
