"""mDNS discovery on this machine (loopback): register, browse, goodbye on stop."""

import asyncio

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
