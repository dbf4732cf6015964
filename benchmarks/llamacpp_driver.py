"""llama.cpp's batch-1 decode on a GGUF file, run by ``benchmarks.gguf_speed`` with the
python of a throwaway venv holding ``llama-cpp-python`` (never a project dependency):

    python -m venv /tmp/llamacpp-venv
    CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/llamacpp-venv/bin/pip install llama-cpp-python==0.3.36

Reads a JSON job on stdin ({model, prompts: [[ids]], output_len, threads, ban: [ids]}) and
prints one JSON object per prompt: wall of max_tokens=1 and of max_tokens=output_len, the
same TTFT / TPOT arithmetic as the other engines. Stdlib and llama_cpp only.
"""

import json
import sys
import time


def main() -> None:
    from llama_cpp import Llama

    job = json.load(sys.stdin)
    llm = Llama(model_path=job["model"], n_ctx=1024, n_batch=512, n_threads=job["threads"],
                n_threads_batch=job["threads"], seed=0, verbose=False)
    bias = {int(t): -1e9 for t in job["ban"]}  # ignore_eos: the end markers can never be sampled

    def run(prompt, n):
        llm.reset()  # no reuse of the previous prompt's KV
        t = time.perf_counter()
        out = llm.create_completion(prompt=prompt, max_tokens=n, temperature=0.0, logit_bias=bias)
        wall = time.perf_counter() - t
        if out["usage"]["completion_tokens"] != n:
            raise RuntimeError(f"llama.cpp produced {out['usage']['completion_tokens']} tokens, wanted {n}")
        return wall

    run(job["prompts"][0], 2)  # warm-up
    for p in job["prompts"]:
        ttft = run(p, 1)
        wall = run(p, job["output_len"])
        print(json.dumps({"ttft_s": ttft, "wall_s": wall,
                          "tpot_ms": (wall - ttft) / (job["output_len"] - 1) * 1e3,
                          "output_tok_s": job["output_len"] / wall}), flush=True)


if __name__ == "__main__":
    main()
