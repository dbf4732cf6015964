"""Zero-config discovery on a LAN: nodes announce ``_edgefleet._tcp.local.`` over mDNS/DNS-SD
(``edgefleet serve --advertise``); the router browses and adds or removes them.

TXT record: ``node_id``, ``version``, ``zone`` (may be empty), ``api`` (the OpenAI path,
``/v1``), ``name``. Discovered nodes are ordinary registry entries with ``source="mdns"``;
a static node is never removed by an mDNS goodbye.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from server import __version__
from server.config import is_loopback
from server.router.registry import NodeSpec

SERVICE_TYPE = "_edgefleet._tcp.local."
API_PATH = "/v1"
log = logging.getLogger("edgefleet.router.discovery")


def _announce_addresses(host: str, interfaces: list[str] | None) -> list[str]:
    if host not in ("0.0.0.0", "::", ""):
        return [host]
    if interfaces:
        return list(interfaces)
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out or ["127.0.0.1"]


def _instance_name(name: str, node_id: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)[:40] or "node"
    return f"{safe}-{node_id[:8]}.{SERVICE_TYPE}"


class NodeAdvertiser:
    """Announces one node. ``start()``/``stop()`` are synchronous and safe to call from
    inside a running event loop: zeroconf runs in its own thread. Registration waits for
    mDNS probing (about a second); from async code call them via ``asyncio.to_thread``."""

    def __init__(self, name: str, node_id: str, host: str, port: int, zone: str | None = None,
                 interfaces: list[str] | None = None):
        if interfaces is None and is_loopback(host):
            interfaces = [host]  # a loopback-bound node is only reachable (and announced) there
        self.interfaces = interfaces
        addresses = _announce_addresses(host, interfaces)
        self.info = AsyncServiceInfo(
            SERVICE_TYPE, _instance_name(name, node_id), port=port,
            properties={"node_id": node_id, "version": __version__, "zone": zone or "", "api": API_PATH,
                        "name": name},
            server=f"edgefleet-{node_id[:8]}.local.",
            addresses=[socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in addresses],
        )
        self._zc: Zeroconf | None = None

    def _in_thread(self, fn: Callable[[], None]) -> None:
        # A Zeroconf created in a thread without an event loop runs its own loop thread, so
        # its blocking API works no matter where start()/stop() are called from.
        error: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised in the caller
                error.append(exc)

        t = threading.Thread(target=run, name="edgefleet-mdns", daemon=True)
        t.start()
        t.join()
        if error:
            raise error[0]

    def start(self) -> None:
        def go() -> None:
            kwargs = {"interfaces": self.interfaces} if self.interfaces else {}
            self._zc = Zeroconf(ip_version=IPVersion.V4Only, **kwargs)
            self._zc.register_service(self.info, allow_name_change=True)
        self._in_thread(go)
        log.info("advertising %s on mDNS as %s", self.info.port, self.info.name)

    def stop(self) -> None:
        zc, self._zc = self._zc, None
        if zc is None:
            return

        def go() -> None:
            try:
                zc.unregister_service(self.info)  # sends the goodbye so routers drop us now
            finally:
                zc.close()
        self._in_thread(go)


class NodeBrowser:
    """Browses for advertised nodes and reports them to the router's registry."""

    def __init__(self, on_add: Callable[[NodeSpec], None], on_remove: Callable[[str], None],
                 interfaces: list[str] | None = None):
        self.on_add = on_add
        self.on_remove = on_remove
        self.interfaces = interfaces
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._urls: dict[str, str] = {}  # service name -> url
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        kwargs = {"interfaces": self.interfaces} if self.interfaces else {}
        self._azc = AsyncZeroconf(ip_version=IPVersion.V4Only, **kwargs)
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._azc is not None:
            await self._azc.async_close()
        self._browser = self._azc = None

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            url = self._urls.pop(name, None)
            if url is not None:
                self.on_remove(url)
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._azc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._azc.zeroconf, 3000):
            log.warning("could not resolve mDNS service %s", name)
            return
        addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
        if not addresses or not info.port:
            return
        props = {k.decode(): (v.decode() if v is not None else "") for k, v in info.properties.items()}
        host = addresses[0]
        host = f"[{host}]" if ":" in host else host
        url = f"http://{host}:{info.port}"
        old = self._urls.get(name)
        if old is not None and old != url:
            self.on_remove(old)
        self._urls[name] = url
        self.on_add(NodeSpec(url=url, name=props.get("name") or None, zone=props.get("zone") or None,
                             source="mdns", node_id=props.get("node_id") or None))
