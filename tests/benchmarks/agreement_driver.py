"""Measure one workload with `vllm.benchmarks.serve` and with `benchmarks.runner`.

Run as a subprocess by test_agreement.py (it imports vLLM, which the test process should
not). Both tools get the same prompts (a ShareGPT-format file of token-exact random
prompts), the same output length with ignore_eos, the same concurrency and seed.

- ``sequential``: vLLM's run, then ours (order alternating by round), as a user would.
- ``paired``: both at once in one event loop, each with its own concurrency gate, so the
  server and the shared machine are in the same state for both; what differs is only how
  each tool measures. vLLM's side is its module's own `benchmark()` coroutine (what
  `vllm bench serve` awaits) on its own `get_samples()` requests, so neither side has
  blocking setup inside the timed window; who is gathered first alternates by round.

usage: agreement_driver.py BASE_URL SERVED_MODEL TOKENIZER_DIR OUT_JSON SEQ_ROUNDS PAIRED_ROUNDS PROMPTS IN OUT CONC
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

KEYS = ("completed", "failed", "total_input_tokens", "total_output_tokens", "duration", "request_throughput",
        "output_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "mean_itl_ms",
        "median_itl_ms", "mean_e2el_ms")


async def main(argv: list[str]) -> None:
    base_url, served, tok_dir, out_json = argv[:4]
    seq_rounds, paired_rounds, n, in_len, out_len, conc = map(int, argv[4:10])
    from vllm.benchmarks.datasets import get_samples
    from vllm.benchmarks.serve import TaskType, add_cli_args, benchmark, main_async
    from vllm.tokenizers import get_tokenizer
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from benchmarks.client import Endpoint, make_client, probe
    from benchmarks.datasets import load_tokenizer, random_requests, sharegpt_requests
    from benchmarks.runner import Workload, run_benchmark_async

    tok = load_tokenizer(tok_dir)
    sg = Path(out_json).with_suffix(".sharegpt.json")
    sg.write_text(json.dumps([{"id": str(i), "conversations": [{"from": "human", "value": r.prompt},
                                                               {"from": "gpt", "value": "-"}]}
                              for i, r in enumerate(random_requests(tok, n, in_len, out_len, seed=0))]))
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    vargv = [
        "--base-url", base_url, "--model", served, "--tokenizer", tok_dir, "--backend", "openai",
        "--dataset-name", "sharegpt", "--dataset-path", str(sg), "--sharegpt-output-len", str(out_len),
        "--ignore-eos", "--num-prompts", str(n), "--max-concurrency", str(conc), "--seed", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--disable-tqdm",
        "--ready-check-timeout-sec", "0"]  # the endpoint was probed once below
    workload = Workload(sharegpt_requests(sg, n, tok, out_len, seed=0), dataset_name="sharegpt",
                        max_concurrency=conc, ignore_eos=True, seed=0)
    ep = Endpoint(base_url, served)
    async with make_client(conc) as c:
        await probe(c, ep)

    async def vllm() -> dict:
        with contextlib.redirect_stdout(sys.stderr):
            return await main_async(parser.parse_args(vargv))  # it mutates its args: fresh each time

    vtok = get_tokenizer(tok_dir)
    vreqs = get_samples(parser.parse_args(vargv), vtok)

    async def vllm_paired() -> dict:
        with contextlib.redirect_stdout(sys.stderr):
            return await benchmark(
                task_type=TaskType.GENERATION, endpoint_type="openai", api_url=base_url + "/v1/completions",
                base_url=base_url, model_id=served, model_name=None, tokenizer=vtok, input_requests=vreqs,
                logprobs=None, request_rate=float("inf"), burstiness=1.0, disable_tqdm=True, num_warmups=0,
                profile=False, selected_percentile_metrics=["ttft", "tpot", "itl", "e2el"],
                selected_percentiles=[50.0, 99.0], ignore_eos=True, goodput_config_dict={},
                max_concurrency=conc, lora_modules=None, extra_headers=None, extra_body={},
                ready_check_timeout_sec=0)

    slos = {"ttft": 150.0, "tpot": 4.0, "e2el": 600.0}
    detailed = replace(workload, save_detailed=True, goodput=slos)

    async def ours() -> dict:
        return (await run_benchmark_async([ep], detailed, tokenizer=tok, progress=False, check=False,
                                          contexts=[{}]))[0]

    await ours()  # untimed: a fresh CPU server is slow on its first shapes, whoever comes first
    out: dict[str, list] = {"sequential": [], "paired": []}
    for mode, rounds in (("sequential", seq_rounds), ("paired", paired_rounds)):
        for i in range(rounds):
            if mode == "paired" and i % 2 == 0:
                v, o = await asyncio.gather(vllm_paired(), ours())
            elif mode == "paired":
                o, v = await asyncio.gather(ours(), vllm_paired())
            elif i % 2 == 0:
                v, o = await vllm(), await ours()
            else:
                o, v = await ours(), await vllm()
            row = {"vllm": {k: v[k] for k in KEYS}, "ours": {k: o[k] for k in KEYS}}
            last = o
            out[mode].append(row)
            print(mode, json.dumps(row), flush=True)
    out["arithmetic"] = arithmetic(last, slos, tok, vreqs)
    out["scripted"] = await scripted()
    Path(out_json).write_text(json.dumps(out, indent=1))


def arithmetic(ours: dict, slos: dict, tok, vreqs) -> dict:
    """vLLM's own calculate_metrics on the requests we measured, next to our summary of them."""
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    outputs = [RequestFuncOutput(success=not err, latency=lat, output_tokens=n, ttft=ttft, itl=itl, prompt_len=p,
                                 start_time=st, error=err)
               for lat, n, ttft, itl, p, st, err in zip(ours["latencies"], ours["output_lens"], ours["ttfts"],
                                                        ours["itls"], ours["input_lens"], ours["start_times"],
                                                        ours["errors"])]
    with contextlib.redirect_stdout(sys.stderr):
        m, _ = calculate_metrics(vreqs, outputs, ours["duration"], tok, [50.0, 90.0, 95.0, 99.0], slos)
    theirs = {"completed": m.completed, "total_input_tokens": m.total_input, "total_output_tokens": m.total_output,
              "request_throughput": m.request_throughput, "request_goodput": m.request_goodput,
              "output_throughput": m.output_throughput, "total_token_throughput": m.total_token_throughput}
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            theirs[f"{stat}_{name}_ms"] = getattr(m, f"{stat}_{name}_ms")
        for p, v in getattr(m, f"percentiles_{name}_ms"):
            theirs[f"p{int(p)}_{name}_ms"] = v
    return {"vllm": {k: float(v) for k, v in theirs.items()}, "ours": {k: ours[k] for k in theirs}}


async def scripted() -> dict:
    """vLLM's request functions and ours on one scripted stream with known timings."""
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import (RequestFuncInput, async_request_openai_chat_completions,
                                                           async_request_openai_completions)

    from benchmarks.client import Endpoint, SampleRequest, make_client, send
    from tests.benchmarks.scripted_server import Script, ScriptedServer, chunk, usage

    rows = []
    for chat in (False, True):
        events = [(0.15, chunk("", chat))] + [(0.03 * (1 + i % 3), chunk("tok", chat)) for i in range(9)]
        srv = ScriptedServer({"go": Script([*events, (0.05, usage(7, 12)), (0, "data: [DONE]")])})
        await srv.start()
        ep = Endpoint(srv.url, "scripted", backend="openai-chat" if chat else "openai")
        fn = async_request_openai_chat_completions if chat else async_request_openai_completions
        async with make_client(1) as client, aiohttp.ClientSession() as session:
            for _ in range(3):
                o = await send(client, ep, SampleRequest("go", 1, 12))
                v = await fn(RequestFuncInput(prompt="go", api_url=ep.api_url, prompt_len=1, output_len=12,
                                              model="scripted"), session)
                rows.append({"chat": chat,
                             "ours": {"ttft": o.ttft, "itl": o.itl, "latency": o.latency, "n": o.output_tokens},
                             "vllm": {"ttft": v.ttft, "itl": v.itl, "latency": v.latency, "n": v.output_tokens}})
        await srv.stop()
    return {"expected": {"ttft": 0.15, "itl": [0.03 * (1 + i % 3) for i in range(9)], "latency": 0.15 + 0.54,
                         "n": 12}, "rows": rows}


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
