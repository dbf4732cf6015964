"""`edgefleet capacity URL`: the capacity document as a terminal panel."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def render_capacity(doc: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    ident = doc["identity"]
    sim = " [bold yellow](SIMULATED)[/]" if ident.get("simulated") else ""
    console.print(f"[bold]{ident['name']}[/] ({ident['node_id']}) edgefleet {ident['version']}, "
                  f"engine {ident['engine']}{sim}, zone {ident.get('zone') or '-'}, state [bold]{doc['state']}[/], "
                  f"{'idle' if doc['idle'] else 'busy'}")
    t = Table("model", "max context", "dtype", "quantization", title="Models")
    for m in doc["models"]:
        note = " [yellow](random weights)[/]" if m.get("random_weights") else ""
        t.add_row(m["id"] + note, str(m["max_model_len"]), m["dtype"], m.get("quantization") or "none")
    console.print(t)
    t = Table("#", "kind", "name", "memory used / total", "util", "temp", "power", title="Accelerators")
    for a in doc["accelerators"]:
        mem = "-"
        if a.get("memory_total_bytes"):
            mem = f"{(a.get('memory_used_bytes') or 0) / 2**30:.1f} / {a['memory_total_bytes'] / 2**30:.1f} GiB"
        t.add_row(str(a["index"]), a["kind"], a["name"], mem,
                  "-" if a.get("utilization_pct") is None else f"{a['utilization_pct']:.0f}%",
                  "-" if a.get("temperature_c") is None else f"{a['temperature_c']:.0f} C",
                  "-" if a.get("power_draw_w") is None else f"{a['power_draw_w']:.0f} W")
    console.print(t)
    ld, pf = doc["load"], doc["performance"]
    console.print(f"Load: running {ld['running']}, waiting {ld['waiting']} ({ld['waiting_prompt_tokens']} prompt "
                  f"tokens), KV {ld['kv_cache_usage'] * 100:.1f}% used, {ld['kv_free_tokens']:,} tokens free, "
                  f"max {ld['max_concurrent_sequences']} sequences")
    console.print(f"Last {pf['window_s']:.0f} s: {pf['requests']} requests, TTFT p50 {_ms(pf.get('ttft_p50_ms'))} "
                  f"p95 {_ms(pf.get('ttft_p95_ms'))}, TPOT p50 {_ms(pf.get('tpot_p50_ms'))}")
    if doc.get("prediction"):
        p = doc["prediction"]
        console.print(f"Prediction for {p['prompt_tokens']} prompt tokens: TTFT {_ms(p['predicted_ttft_ms'])}, "
                      f"{'would admit' if p['would_admit'] else 'would NOT admit'} ({p['reason']})")
