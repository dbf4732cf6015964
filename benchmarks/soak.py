"""Soak: a router and several sim nodes, as real processes, at saturation for ``--minutes``.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.soak --minutes 30 --out /tmp/soak

Workers keep ``--concurrency`` requests in flight through the router (twice the nodes'
slots together, so the nodes queue: saturation is the nodes' slots, not the load
generator's CPU; a sample shows the queues): streamed and whole answers, a share carrying an
``Idempotency-Key``, half of those sent twice (a retry at once, attaching to the running
generation, or one after it finished, answered from the store). Every ``--sample-every``
seconds the router's and each node's RSS and open file descriptors, and the router's asyncio
task count and open exchanges (its ``/metrics``), are sampled. At the end it checks
(RELIABILITY "Proving it", tracker issue #13):

- RSS growth after the warm-up under ``--rss-bound`` (5 %) for the router and every node,
  from the first sample after the warm-up to the last;
- every request answered exactly once: all answers 200, the response ids of distinct
  generations unique, a retried key answered with its first answer's id, and the nodes'
  finished-request counters adding up to the generations sent (a retry never ran twice);
- nothing leaked: open exchanges and in-flight counts back to 0 on the router, admission
  in-flight and queue back to 0 on every node, tasks back to the idle level.

Writes ``soak.json`` (settings, samples, checks) and ``soak.md`` (the table) to ``--out``.
The sim engine keeps the generation cheap, so what is soaked is the HTTP layers, the
router's pool, relay and accounting, and the idempotency store. Not a timed test; the short
version in the suite is tests/e2e/test_router_soak.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))
MODEL = "sim-model"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(slots=True)
class Proc:
    name: str
    popen: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(name: str, args: list[str], workdir: Path) -> Proc:
    port = free_port()
    log = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        popen = subprocess.Popen([EDGEFLEET, *args, "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT,
                                 env=env)
    return Proc(name, popen, f"http://127.0.0.1:{port}", log)


def wait_ready(p: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.popen.poll() is not None:
            raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.log.read_text()[-3000:]}")
        try:
            if httpx.get(p.url + "/ready", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{p.name} not ready after {timeout} s:\n{p.log.read_text()[-3000:]}")


def start_fleet(n_nodes: int, slots: int, decode_ms: float, workdir: Path) -> tuple[Proc, list[Proc]]:
    nodes = []
    for i in range(n_nodes):
        state = workdir / f"node{i}"
        state.mkdir(exist_ok=True)
        nodes.append(spawn(f"node{i}", ["serve", "--engine", "sim", "--name", f"node{i}",
                                        "--served-model-name", MODEL, "--max-num-seqs", str(slots),
                                        "--engine-option", f"decode_ms={decode_ms}",
                                        "--engine-option", "decode_ms_per_seq=0.05",
                                        "--state-dir", str(state), "--log-level", "warning"], workdir))
    for n in nodes:
        wait_ready(n)
    rstate = workdir / "router"
    rstate.mkdir(exist_ok=True)
    router = spawn("router", ["route", *(a for n in nodes for a in ("--node", n.url)), "--no-discover",
                              "--state-dir", str(rstate), "--log-level", "warning"], workdir)
    wait_ready(router, 30)
    return router, nodes


# --- load ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Tally:
    sent: int = 0  # HTTP requests made
    generations: int = 0  # distinct generations asked for (a retried key counts once)
    ids: dict[str, int] = field(default_factory=dict)  # response id -> generations answered with it
    statuses: dict[int, int] = field(default_factory=dict)
    retries_same_id: int = 0
    retries_other_id: int = 0
    errors: list[str] = field(default_factory=list)


async def _call(client: httpx.AsyncClient, body: dict, key: str | None, t: Tally) -> str | None:
    headers = {"Idempotency-Key": key} if key else {}
    t.sent += 1
    try:
        if body["stream"]:
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")] if r.status_code == 200 \
                    else [await r.aread()]
            t.statuses[r.status_code] = t.statuses.get(r.status_code, 0) + 1
            if r.status_code != 200 or lines[-1] != "data: [DONE]":
                t.errors.append(f"stream {r.status_code}: {str(lines[-1])[:200]}")
                return None
            ids = {json.loads(ln[6:])["id"] for ln in lines[:-1]}
            if len(ids) != 1:
                t.errors.append(f"stream carried ids {sorted(ids)[:4]}")
                return None
            return ids.pop()
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        t.statuses[r.status_code] = t.statuses.get(r.status_code, 0) + 1
        if r.status_code != 200:
            t.errors.append(f"whole {r.status_code}: {r.text[:200]}")
            return None
        return r.json()["id"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        t.errors.append(f"{time.strftime('%H:%M:%S')} stream={body['stream']} key={bool(key)} "
                        f"{type(exc).__name__}: {exc}"[:200])
        return None


def _count(t: Tally, rid: str | None) -> None:
    if rid is not None:
        t.ids[rid] = t.ids.get(rid, 0) + 1


async def _one(client: httpx.AsyncClient, i: int, t: Tally, idem_share: float) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"soak request {i} " + "x" * (i % 200)}],
            "max_tokens": 4 + i % 29, "stream": i % 2 == 0}
    t.generations += 1
    if (i * 7919) % 100 >= idem_share * 100:
        _count(t, await _call(client, body, None, t))
        return
    key = uuid.uuid4().hex
    if i % 3 == 0:  # once
        _count(t, await _call(client, body, key, t))
        return
    if i % 3 == 1:  # a retry while the first runs: it attaches
        first, second = await asyncio.gather(_call(client, body, key, t), _call(client, body, key, t))
    else:  # a retry after it finished: answered from the store
        first = await _call(client, body, key, t)
        second = await _call(client, body, key, t)
    _count(t, first)
    if first is not None and second is not None:
        if first == second:
            t.retries_same_id += 1
        else:
            t.retries_other_id += 1


async def drive(url: str, concurrency: int, until: float, t: Tally, idem_share: float) -> None:
    # Idle client connections expire before the server's 5 s keep-alive timeout (uvicorn's),
    # so the client never sends on a connection the router is closing (a client-side race).
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2,
                          keepalive_expiry=2.0)
    counter = iter(range(10**12))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, trust_env=False) as client:
        async def worker() -> None:
            while time.monotonic() < until:
                await _one(client, next(counter), t, idem_share)
        await asyncio.gather(*(worker() for _ in range(concurrency)))


# --- sampling --------------------------------------------------------------------------------

_METRIC = re.compile(rb"^(edgefleet_router_asyncio_tasks|edgefleet_router_open_exchanges) ([0-9.e+]+)$", re.M)


def router_gauges(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).content
    return {m.group(1).decode().removeprefix("edgefleet_router_"): float(m.group(2)) for m in _METRIC.finditer(text)}


def node_metric(url: str, name: str) -> float:
    """The sum of a metric's series on a node's /metrics."""
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def node_success(url: str) -> float:
    return node_metric(url, "vllm:request_success_total")


def sample(router: Proc, nodes: list[Proc], started: float, t: Tally) -> dict:
    row: dict = {"t_s": round(time.monotonic() - started, 1), "sent": t.sent}
    for p in [router, *nodes]:
        proc = psutil.Process(p.popen.pid)
        row[f"{p.name}_rss_mib"] = round(proc.memory_info().rss / 2**20, 2)
        row[f"{p.name}_fds"] = proc.num_fds()
    try:
        row.update({f"router_{k}": int(v) for k, v in router_gauges(router.url).items()})
        for n in nodes:  # busy and queued on the nodes: saturation shows as a queue
            adm = httpx.get(n.url + "/v1/capacity", timeout=10, trust_env=False).json()["admission"]
            row[f"{n.name}_busy"], row[f"{n.name}_queued"] = adm.get("in_flight"), adm.get("queued")
            row[f"{n.name}_tasks"] = int(node_metric(n.url, "edgefleet_asyncio_tasks"))
    except httpx.HTTPError as exc:
        row["metrics_error"] = str(exc)
    return row


async def sampler(router: Proc, nodes: list[Proc], started: float, until: float, every: float, t: Tally,
                  rows: list[dict], out: Path | None) -> None:
    while time.monotonic() < until:
        rows.append(row := await asyncio.to_thread(sample, router, nodes, started, t))
        if out is not None:  # as it goes, so a run that dies still leaves its samples
            with open(out / "samples.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
        await asyncio.sleep(max(0.0, min(every, until - time.monotonic())))


# --- the run ---------------------------------------------------------------------------------

def settle(router: Proc, nodes: list[Proc], timeout: float = 20.0) -> dict:
    """After the load: wait for every counter to come back to rest, then report where they are."""
    deadline = time.monotonic() + timeout
    while True:
        fleet = httpx.get(router.url + "/v1/fleet", timeout=10, trust_env=False).json()
        caps = [httpx.get(n.url + "/v1/capacity", timeout=10, trust_env=False).json() for n in nodes]
        gauges = router_gauges(router.url)
        state = {
            "router_open_exchanges": int(gauges.get("open_exchanges", -1)),
            "router_node_inflight": {n.get("name", n.get("url")): n.get("inflight") for n in fleet.get("nodes", [])},
            "node_in_flight": [c["admission"].get("in_flight") for c in caps],
            "node_queued": [c["admission"].get("queued") for c in caps],
            "router_tasks": int(gauges.get("asyncio_tasks", -1)),
            "node_tasks": [int(node_metric(n.url, "edgefleet_asyncio_tasks")) for n in nodes],
        }
        rest = (state["router_open_exchanges"] == 0 and not any(state["router_node_inflight"].values())
                and not any(state["node_in_flight"]) and not any(state["node_queued"]))
        if rest or time.monotonic() > deadline:
            state["at_rest"] = rest
            return state
        time.sleep(0.2)


def growth(rows: list[dict], key: str) -> dict:
    first, last = rows[0][key], rows[-1][key]
    return {"after_warmup_mib": first, "end_mib": last, "max_mib": max(r[key] for r in rows),
            "growth": round((last - first) / first, 4)}


def run(minutes: float, nodes_n: int, slots: int, concurrency: int, every: float, warmup_s: float,
        idem_share: float, rss_bound: float, out: Path | None, decode_ms: float = 20.0) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-soak-"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples.jsonl").unlink(missing_ok=True)
    router, nodes = start_fleet(nodes_n, slots, decode_ms, workdir)
    t = Tally()
    rows: list[dict] = []
    try:
        idle_tasks = int(router_gauges(router.url).get("asyncio_tasks", -1))
        idle_node_tasks = [int(node_metric(n.url, "edgefleet_asyncio_tasks")) for n in nodes]
        started = time.monotonic()
        until = started + minutes * 60

        async def main() -> None:
            await asyncio.gather(drive(router.url, concurrency, until, t, idem_share),
                                 sampler(router, nodes, started, until, every, t, rows, out))
        asyncio.run(main())
        elapsed = time.monotonic() - started
        rows.append(sample(router, nodes, started, t))  # the end, before the quiet period
        rest = settle(router, nodes)
        success = sum(node_success(n.url) for n in nodes)
        after = [r for r in rows if r["t_s"] >= warmup_s] or rows[-2:]
        mem = {p.name: growth(after, f"{p.name}_rss_mib") for p in [router, *nodes]}
        fds = {p.name: [after[0][f"{p.name}_fds"], after[-1][f"{p.name}_fds"], max(r[f"{p.name}_fds"] for r in after)]
               for p in [router, *nodes]}
        tasks = [r["router_asyncio_tasks"] for r in after if "router_asyncio_tasks" in r]
        queued = [sum(r.get(f"{n.name}_queued") or 0 for n in nodes) for r in after]
        doubled = sum(1 for c in t.ids.values() if c > 1)
        checks = {
            "rss_growth_under_bound": all(m["growth"] < rss_bound for m in mem.values()),
            "all_answers_200": set(t.statuses) == {200} and not t.errors,
            "ids_unique": doubled == 0 and len(t.ids) == t.generations,
            "retries_same_id": t.retries_other_id == 0,
            "nodes_ran_each_generation_once": int(success) == t.generations,
            "counters_at_rest": rest["at_rest"],
            "tasks_back_to_idle": rest["router_tasks"] <= idle_tasks + 2
                                  and all(a <= b + 2 for a, b in zip(rest["node_tasks"], idle_node_tasks)),
        }
        result = {
            "command": " ".join(sys.argv),
            "settings": {"minutes": minutes, "nodes": nodes_n, "slots_per_node": slots, "concurrency": concurrency,
                         "decode_ms": decode_ms,
                         "sample_every_s": every, "warmup_s": warmup_s, "idempotency_share": idem_share,
                         "rss_bound": rss_bound},
            "elapsed_s": round(elapsed, 1), "requests_sent": t.sent, "generations": t.generations,
            "requests_per_s": round(t.sent / elapsed, 1), "node_finished_requests": int(success),
            "distinct_ids": len(t.ids), "ids_answered_twice": doubled,
            "retries_same_id": t.retries_same_id, "retries_other_id": t.retries_other_id,
            "statuses": {str(k): v for k, v in sorted(t.statuses.items())}, "errors": t.errors[:20],
            "error_count": len(t.errors), "rss": mem, "fds_after_warmup_end_max": fds,
            "node_queue_sum": {"min": min(queued, default=None), "max": max(queued, default=None),
                               "samples_with_queue": sum(1 for q in queued if q), "samples": len(queued)},
            "node_tasks": {n.name: {"idle_before": idle_node_tasks[i],
                                    "max": max((r.get(f"{n.name}_tasks", 0) for r in after), default=None),
                                    "at_rest_after": rest["node_tasks"][i]} for i, n in enumerate(nodes)},
            "router_tasks": {"idle_before": idle_tasks, "min": min(tasks, default=None),
                             "max": max(tasks, default=None), "at_rest_after": rest["router_tasks"]},
            "at_rest": rest, "checks": checks, "ok": all(checks.values()), "samples": rows,
        }
    finally:
        router.stop()
        for n in nodes:
            n.stop()
        logs = {p.name: p.log.read_text()[-2000:] for p in [router, *nodes]}
        shutil.rmtree(workdir, ignore_errors=True)
    result["log_tails"] = {k: v for k, v in logs.items() if v.strip()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "soak.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    names = ["router", *(f"node{i}" for i in range(r["settings"]["nodes"]))]
    lines = [f"Command: `{r['command']}`", "",
             f"{r['elapsed_s']} s, {r['requests_sent']} requests ({r['requests_per_s']}/s), "
             f"{r['generations']} generations, nodes finished {r['node_finished_requests']}; "
             f"statuses {r['statuses']}; retries answered with the first id {r['retries_same_id']}, "
             f"with another {r['retries_other_id']}; ids answered twice {r['ids_answered_twice']}.", "",
             "| process | RSS after warm-up (MiB) | RSS end (MiB) | RSS max (MiB) | growth "
             "| fds after warm-up / end / max |",
             "|---|---|---|---|---|---|"]
    for n in names:
        m, f = r["rss"][n], r["fds_after_warmup_end_max"][n]
        lines.append(f"| {n} | {m['after_warmup_mib']} | {m['end_mib']} | {m['max_mib']} | {m['growth']:+.2%} | "
                     f"{f[0]} / {f[1]} / {f[2]} |")
    rt = r["router_tasks"]
    lines += ["", f"Router asyncio tasks: idle {rt['idle_before']}, under load {rt['min']}-{rt['max']}, "
                  f"after {rt['at_rest_after']}. Node asyncio tasks (idle / max under load / after): "
                  + ", ".join(f"{k} {v['idle_before']} / {v['max']} / {v['at_rest_after']}"
                              for k, v in r.get("node_tasks", {}).items())
                  + f". Requests queued on the nodes (sum) after warm-up: "
                  f"{r['node_queue_sum']['min']}-{r['node_queue_sum']['max']}, non-zero in "
                  f"{r['node_queue_sum']['samples_with_queue']} of {r['node_queue_sum']['samples']} samples. "
                  f"At rest after the load: {json.dumps(r['at_rest'])}.", "",
              "| check | result |", "|---|---|",
              *(f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in r["checks"].items()),
              "", "Samples:", "", "| t (s) | sent | " + " | ".join(f"{n} RSS" for n in names)
              + " | router fds | tasks | open | queued |", "|---" * (len(names) + 6) + "|"]
    for s in r["samples"]:
        lines.append(f"| {s['t_s']} | {s['sent']} | " + " | ".join(str(s[f'{n}_rss_mib']) for n in names)
                     + f" | {s['router_fds']} | {s.get('router_asyncio_tasks', '-')}"
                     + f" | {s.get('router_open_exchanges', '-')}"
                     + f" | {sum(s.get(f'{n}_queued') or 0 for n in names[1:])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--slots", type=int, default=4, help="--max-num-seqs of each node")
    ap.add_argument("--decode-ms", type=float, default=20.0, help="the sim engine's decode step")
    ap.add_argument("--concurrency", type=int, default=0, help="requests in flight (default: 2 x all slots)")
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=None, help="seconds (default: 10 %% of the run, at most 120)")
    ap.add_argument("--idempotency-share", type=float, default=0.3)
    ap.add_argument("--rss-bound", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    warmup = a.warmup if a.warmup is not None else min(120.0, a.minutes * 6)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the fleet is stopped on the way out
    result = run(a.minutes, a.nodes, a.slots, a.concurrency or 2 * a.nodes * a.slots, a.sample_every,
                 warmup, a.idempotency_share, a.rss_bound, a.out, a.decode_ms)
    print(markdown(result))
    print(json.dumps({k: result[k] for k in ("checks", "ok")}, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
