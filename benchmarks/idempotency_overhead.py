"""Idempotency-Key cost on the router: the same non-streamed and streamed request without a
key, with a fresh key each time (run + SQLite write off the loop), and a retry of a finished
key (a replay from the store; nothing runs), sequential, interleaved A B C A B C ...

    python -m benchmarks.idempotency_overhead [--n 300] [--output-len 16]

The node is a sim node with near-zero modelled compute, so the numbers are the router's
HTTP path plus the store. Reported as medians and as ratios to the keyless request.
Not a timed test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.router_overhead import MODEL, router, sim_node


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--output-len", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="idem-bench-"))
    node = sim_node("node", tmp, {"prefill_tokens_per_s": 1e9, "decode_ms": 0.0})
    r = router([node.url], tmp, ["--state-dir", str(tmp / "state")])
    try:
        url = r.url + "/v1/chat/completions"
        times: dict[str, list[float]] = {}
        with httpx.Client(trust_env=False, timeout=30) as c:
            for stream in (False, True):
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": args.output_len, "stream": stream}
                c.post(url, json=body, headers={"idempotency-key": f"replay-{stream}"}).raise_for_status()
                kinds = {"no key": lambda i: {}, "fresh key": lambda i: {"idempotency-key": f"k-{stream}-{i}"},
                         "replay": lambda i: {"idempotency-key": f"replay-{stream}"}}
                for _ in range(20):  # warm up
                    c.post(url, json=body).raise_for_status()
                for i in range(args.n):
                    for name, headers in kinds.items():
                        t = time.perf_counter()
                        resp = c.post(url, json=body, headers=headers(i))
                        _ = resp.content
                        times.setdefault(f"{'stream' if stream else 'whole'} {name}", []).append(
                            (time.perf_counter() - t) * 1000)
                        resp.raise_for_status()
        print(f"{'request':<22}{'median ms':>10}{'p90 ms':>10}{'ratio':>8}")
        for label, xs in times.items():
            base = statistics.median(times[label.split()[0] + " no key"])
            med = statistics.median(xs)
            p90 = sorted(xs)[int(0.9 * len(xs))]
            print(f"{label:<22}{med:>10.2f}{p90:>10.2f}{med / base:>8.2f}")
    finally:
        r.stop()
        node.stop()


if __name__ == "__main__":
    main()
