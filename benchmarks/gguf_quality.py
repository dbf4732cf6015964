"""Perplexity of SmolLM2-135M-Instruct (Q4_1 GGUF) as each loading path serves it.

    python -m benchmarks.gguf_quality

On tests/quality/data/us_founding_documents.txt (public domain; ~2,700 tokens), scored in
non-overlapping windows of 1024 tokens, float32 activations throughout:

- dequantized: every GGUF tensor dequantized to float32 (what vLLM serves after conversion);
- direct Q4_1: the native engine's int4 layers filled from the Q4_1 blocks (no float round trip);
- int8 / int4 gN: the native engine's on-load quantization of the dequantized float model.

The model comes from the model cache (fetched once if missing). Prints a markdown table;
the figures in docs/native-engine.md come from this script.
"""

from __future__ import annotations

import time

WINDOW = 1024
VARIANTS = [("dequantized float32", False, None, {}), ("direct Q4_1 (int4 g32 + mins)", True, None, {}),
            ("on-load int8 (per channel)", False, "int8", {}),
            ("on-load int4 g32", False, "int4", {"int4_group_size": 32}),
            ("on-load int4 g64", False, "int4", {"int4_group_size": 64})]


def main() -> None:
    from transformers import AutoTokenizer

    from server.engine.native.loader import load_model
    from server.gguf.convert import metadata_dir
    from server.gguf.weights import GgufWeights
    from server.model_cache import ensure_default_model
    from tests.quality.conftest import DATA, DenseOnly
    from tests.quality.lm import native_logits, windowed_perplexity

    meta, g, _ = metadata_dir(ensure_default_model())
    ws = GgufWeights(g)
    tok = AutoTokenizer.from_pretrained(str(meta))
    ids = tok.encode(DATA.read_text(), add_special_tokens=False)
    print(f"{len(ids)} tokens, windows of {WINDOW}\n")
    print("| weights | perplexity | vs dequantized | weight bytes |\n|---|---|---|---|")
    base = None
    for name, direct, quant, opts in VARIANTS:
        t0 = time.perf_counter()
        lm = load_model(meta, "float32", quant, "cpu", 2048, opts, weights=ws if direct else DenseOnly(ws))
        ppl = windowed_perplexity(lambda chunk: native_logits(lm, chunk), ids, WINDOW)
        base = base or ppl
        print(f"| {name} | {ppl:.4f} | {(ppl / base - 1) * 100:+.2f} % | {lm.weight_bytes / 2**20:.0f} MiB |"
              f"  <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)
        del lm


if __name__ == "__main__":
    main()
