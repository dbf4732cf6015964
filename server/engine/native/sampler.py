"""Batched sampling: logit bias, penalties, temperature, top-k, top-p, min-p, seeds, logprobs.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which equals drawing
from p, and lets each seeded row draw its noise from its own generator: a request with a
seed gets the same tokens whatever else shares its batch. Logprobs are those of the raw
model distribution (before penalties and temperature), as vLLM reports them by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from server.sampling import SamplingOptions


@dataclass(slots=True)
class SamplingRow:
    """What the sampler needs from one sequence: the request's options, plus the state
    sampling keeps per sequence (its seeded generator, the tokens the penalties look at)."""

    options: SamplingOptions
    generator: torch.Generator | None = None
    prompt_ids: list[int] | None = None  # for the repetition penalty (only kept when it is on)
    output_ids: list[int] = field(default_factory=list)

    @classmethod
    def for_sequence(cls, options: SamplingOptions, prompt_ids: list[int], device: torch.device | str) -> SamplingRow:
        generator = None
        if options.seed is not None and options.temperature > 0:
            generator = torch.Generator(device=device)
            generator.manual_seed(options.seed)
        return cls(options, generator, list(prompt_ids) if options.repetition_penalty != 1.0 else None)


@dataclass(slots=True)
class SampleResult:
    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    vocab = logits.shape[1]
    for i, r in enumerate(rows):
        o = r.options
        if o.logit_bias:
            ids = torch.tensor([t for t in o.logit_bias if 0 <= t < vocab], dtype=torch.long)
            vals = torch.tensor([o.logit_bias[t] for t in o.logit_bias if 0 <= t < vocab])
            logits[i].index_add_(0, ids.to(logits.device), vals.to(logits.device, logits.dtype))
        if o.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(r.prompt_ids or []) | set(r.output_ids or [])),
                                dtype=torch.long, device=logits.device)
            if seen.numel():
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / o.repetition_penalty,
                                              vals * o.repetition_penalty)
        if (o.presence_penalty or o.frequency_penalty) and r.output_ids:
            out = torch.tensor(r.output_ids, dtype=torch.long, device=logits.device)
            counts = torch.bincount(out, minlength=vocab)[:vocab].to(logits.dtype)
            logits[i] -= o.frequency_penalty * counts + o.presence_penalty * (counts > 0).to(logits.dtype)


def _filter(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Temperature, then top-k / top-p / min-p masks; returns probabilities."""
    dev = logits.device
    temp = torch.tensor([max(r.options.temperature, 1e-5) for r in rows], device=dev)
    logits = logits / temp[:, None]
    if any(r.options.top_k > 0 for r in rows) or any(r.options.top_p < 1.0 for r in rows):
        vocab = logits.shape[1]
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        k = torch.tensor([r.options.top_k if 0 < r.options.top_k < vocab else vocab for r in rows], device=dev)
        ranks = torch.arange(vocab, device=dev)[None, :]
        drop = ranks >= k[:, None]
        top_p = torch.tensor([r.options.top_p for r in rows], device=dev)
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
        cum_before = probs.cumsum(-1) - probs  # mass strictly above this token
        drop |= cum_before >= top_p[:, None]
        drop[:, 0] = False  # always keep the best token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, idx, sorted_logits)
    probs = logits.softmax(-1)
    if any(r.options.min_p > 0 for r in rows):
        min_p = torch.tensor([r.options.min_p for r in rows], device=dev)
        probs = probs.masked_fill(probs < min_p[:, None] * probs.amax(-1, keepdim=True), 0.0)
    return probs


def _race(probs: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    noise = torch.empty_like(probs)
    unseeded = [i for i, r in enumerate(rows) if r.generator is None]
    if unseeded:
        noise[unseeded] = torch.empty((len(unseeded), probs.shape[1]), device=probs.device).exponential_()
    for i, r in enumerate(rows):
        if r.generator is not None:
            noise[i].exponential_(generator=r.generator)
    return (probs / noise).argmax(-1)


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> list[SampleResult]:
    """logits ``[B, V]`` fp32 (modified in place) -> one result per row."""
    want_lp = [r.options.logprobs is not None for r in rows]
    raw_lp = torch.log_softmax(logits, -1) if any(want_lp) else None
    _apply_penalties(logits, rows)
    greedy = torch.tensor([r.options.temperature <= 0.0 for r in rows], device=logits.device)
    tokens = logits.argmax(-1)
    if not bool(greedy.all()):
        sampled = _race(_filter(logits, rows), rows)
        tokens = torch.where(greedy, tokens, sampled)
    token_list = tokens.tolist()
    results = []
    for i, r in enumerate(rows):
        res = SampleResult(token_list[i])
        if raw_lp is not None and r.options.logprobs is not None:
            res.logprob = float(raw_lp[i, token_list[i]])
            if r.options.logprobs > 0:
                vals, ids = raw_lp[i].topk(min(r.options.logprobs, raw_lp.shape[1]))
                res.top = list(zip(ids.tolist(), vals.tolist()))
            else:
                res.top = []
        results.append(res)
    return results
