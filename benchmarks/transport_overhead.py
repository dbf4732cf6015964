"""Per-request cost of server/transport.py's protocol against uvicorn's stock httptools one.

A trivial ASGI app behind each, in its own process; one client sends N sequential keep-alive
GETs over a raw socket; runs alternate (stock, limited, stock, ...) and the report is the
ratio of the medians. Usage: PYTHONPATH=. python benchmarks/transport_overhead.py [N] [ROUNDS]
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time

SERVER = r'''
import sys, uvicorn
from server.transport import TransportLimits, server_config

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

port = int(sys.argv[1])
if sys.argv[2] == "stock":
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", log_level="warning", lifespan="off")
else:
    config = server_config(app, host="127.0.0.1", port=port, limits=TransportLimits(), log_level="warning",
                           lifespan="off")
uvicorn.Server(config).run()
'''

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(kind: str, n: int) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), kind])
    try:
        for _ in range(100):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(500):  # warm-up
            sock.sendall(REQUEST)
            sock.recv(4096)
        start = time.perf_counter()
        for _ in range(n):
            sock.sendall(REQUEST)
            sock.recv(4096)
        elapsed = time.perf_counter() - start
        sock.close()
        return elapsed / n * 1e6  # microseconds per request
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    results: dict[str, list[float]] = {"stock": [], "limited": []}
    for _ in range(rounds):
        for kind in ("stock", "limited"):
            results[kind].append(run(kind, n))
    stock, limited = (statistics.median(results[k]) for k in ("stock", "limited"))
    print(f"stock httptools protocol : {stock:.1f} us/request (median of {rounds}, {n} requests each)")
    print(f"edgefleet limited        : {limited:.1f} us/request")
    print(f"ratio limited/stock      : {limited / stock:.3f}")


if __name__ == "__main__":
    main()
