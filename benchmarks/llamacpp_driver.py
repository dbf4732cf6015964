"""llama.cpp's batch-1 decode on a GGUF file, run by ``benchmarks.gguf_speed`` with the
python of a throwaway venv holding ``llama-cpp-python`` (never a project dependency):

    python -m venv /tmp/llamacpp-venv
    /tmp/llamacpp-venv/bin/pip install numpy typing_extensions diskcache jinja2 scikit-build-core cmake
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
      -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
      /tmp/llamacpp-venv/bin/pip install --no-deps --no-build-isolation llama-cpp-python==0.3.36

(~15 min on 2 cores.) Set the CPU flags by hand: on the 2-core VM the benchmarks ran on, a
``-DGGML_NATIVE=ON`` build (which also enables AMX, reported by that CPU) segfaults in its
first ``eval``; the build above runs.

Reads a JSON job on stdin ({model, prompts: [[ids]], output_len, threads, ban: [ids]}) and
prints one JSON object per prompt: wall of max_tokens=1 and of max_tokens=output_len, the
same TTFT / TPOT arithmetic as the other engines, twice:

- ``api``: ``create_completion``, what a llama-cpp-python user gets (its sampler chain and
  detokenizer run per token, in Python);
- ``eval``: llama.cpp's own decode, ``eval`` of one token at a time with a greedy argmax
  over its logits: no sampler, no text. This is the figure to beat; a C++ front end such as
  llama-server sits between the two.

Stdlib, numpy (a llama_cpp dependency) and llama_cpp only.
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

    import numpy as np

    banned = list(bias)

    def run_eval(prompt, n):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        for i in range(n):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            logits[banned] = -np.inf
            if i < n - 1:  # the n-th token needs no forward pass of its own
                llm.eval([int(np.argmax(logits))])
        return time.perf_counter() - t

    def row(run_, p, n):
        ttft, wall = run_(p, 1), run_(p, n)
        return {"ttft_s": ttft, "wall_s": wall, "tpot_ms": (wall - ttft) / (n - 1) * 1e3, "output_tok_s": n / wall}

    run(job["prompts"][0], 2)  # warm-up
    run_eval(job["prompts"][0], 2)
    for p in job["prompts"]:
        print(json.dumps({"api": row(run, p, job["output_len"]), "eval": row(run_eval, p, job["output_len"])}),
              flush=True)


if __name__ == "__main__":
    main()
