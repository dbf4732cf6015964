"""Measure one workload with `vllm.benchmarks.serve` and with `benchmarks.runner`.

Run as a subprocess by test_agreement.py (it imports vLLM, which the test process should
not). Both tools get the same prompts (a ShareGPT-format file of token-exact random
prompts), the same output length with ignore_eos, the same concurrency and seed.

- ``sequential``: vLLM's run, then ours (order alternating by round), as a user would.
- ``paired``: both at once in one event loop, each with its own concurrency gate, so the
  server and the shared machine are in the same state for both; what differs is only how
  each tool measures. vLLM's `main_async` does its blocking setup before its first await,
  so gathering it first makes both start dispatching together.

usage: agreement_driver.py BASE_URL SERVED_MODEL TOKENIZER_DIR OUT_JSON SEQ_ROUNDS PAIRED_ROUNDS PROMPTS IN OUT CONC
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

KEYS = ("completed", "failed", "total_input_tokens", "total_output_tokens", "duration", "request_throughput",
        "output_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "mean_itl_ms",
        "median_itl_ms", "mean_e2el_ms")


async def main(argv: list[str]) -> None:
    base_url, served, tok_dir, out_json = argv[:4]
    seq_rounds, paired_rounds, n, in_len, out_len, conc = map(int, argv[4:10])
    from vllm.benchmarks.serve import add_cli_args, main_async
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

    async def ours() -> dict:
        return (await run_benchmark_async([ep], workload, tokenizer=tok, progress=False, check=False,
                                          contexts=[{}]))[0]

    out: dict[str, list] = {"sequential": [], "paired": []}
    for mode, rounds in (("sequential", seq_rounds), ("paired", paired_rounds)):
        for i in range(rounds):
            if mode == "paired":
                v, o = await asyncio.gather(vllm(), ours())
            elif i % 2 == 0:
                v, o = await vllm(), await ours()
            else:
                o, v = await ours(), await vllm()
            row = {"vllm": {k: v[k] for k in KEYS}, "ours": {k: o[k] for k in KEYS}}
            out[mode].append(row)
            print(mode, json.dumps(row), flush=True)
    Path(out_json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
