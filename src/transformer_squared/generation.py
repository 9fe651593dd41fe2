"""Batched generation with the KV cache (left padding), greedy or sampled.

A thin layer over ``model.generate`` that returns decoded completions plus token counts, and
optionally gives each row its own expert (mixed-expert batches, through ``SVFModel.rows``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import T2Error


@dataclass
class Generation:
    """One completion: its text, how many tokens were generated, and whether it hit EOS."""

    text: str
    num_tokens: int
    finished: bool
    token_ids: list[int]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    svf=None,
    experts: Sequence | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    progress=None,
) -> list[Generation]:
    """Generate one completion per prompt (already formatted, e.g. with the chat template).

    ``experts`` (with ``svf``) gives each prompt its own expert or ``None`` for the base
    weights; rows are batched together regardless of which expert they carry.
    ``progress`` is an optional callable taking the number of prompts just finished.
    """
    if max_new_tokens < 1:
        raise T2Error("max_new_tokens must be at least 1")
    if batch_size < 1:
        raise T2Error("batch_size must be at least 1")
    if experts is not None and (svf is None or len(experts) != len(prompts)):
        raise T2Error("per-prompt experts need the SVFModel and one entry per prompt")
    device = next(model.parameters()).device
    gen_kwargs = _generate_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    out: list[Generation] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    rng = contextlib.ExitStack()
    if seed is not None:  # seeded sampling without disturbing the caller's random state
        rng.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
        torch.manual_seed(seed)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            ctx = expert_weights(svf, experts[start:start + batch_size]) if experts is not None \
                else contextlib.nullcontext()
            with torch.no_grad(), ctx:
                seqs = model.generate(**enc, **gen_kwargs)
            out += _decode_rows(seqs[:, enc["input_ids"].shape[1]:], tokenizer, stop)
            if progress is not None:
                progress(len(chunk))
    finally:
        tokenizer.padding_side = old_side
        rng.close()
    return out


def sample_group(model, tokenizer, prompt: str, k: int, *, max_new_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Generation]:
    """``k`` sampled completions of one prompt, with the prompt encoded once.

    The prompt (all but its last token) is run once, its KV cache is repeated ``k`` times, and
    ``model.generate`` continues from it; the samples are the ones ``generate`` would draw for
    ``k`` copies of the prompt with the same seed (same logits, same random draws: tested), at a
    fraction of the prefill cost.
    """
    if k < 1 or max_new_tokens < 1:
        raise T2Error("k and max_new_tokens must be at least 1")
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    if ids.shape[1] < 2:  # nothing to cache
        return generate(model, tokenizer, [prompt] * k, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, batch_size=k, seed=seed)
    gen_kwargs = _generate_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    rng = contextlib.ExitStack()
    if seed is not None:
        rng.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
        torch.manual_seed(seed)
    try:
        with torch.no_grad():
            cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
            cache.batch_repeat_interleave(k)
            rows = ids.repeat(k, 1)
            cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
            seqs = model.generate(input_ids=rows, attention_mask=torch.ones_like(rows), **{cache_kw: cache},
                                  **gen_kwargs)
    finally:
        rng.close()
    return _decode_rows(seqs[:, ids.shape[1]:], tokenizer, None)


def _generate_kwargs(tokenizer, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    """``model.generate`` options: sampling at ``temperature`` (top-k off) or greedy at 0."""
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def _decode_rows(new: torch.Tensor, tokenizer, stop: Sequence[str] | None) -> list[Generation]:
    out = []
    for row in new.tolist():
        ids = _trim(row, tokenizer)
        finished = len(ids) < len(row) or (bool(ids) and ids[-1] == tokenizer.eos_token_id)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if stop:
            text = _apply_stop(text, stop)
        out.append(Generation(text=text, num_tokens=len(ids), finished=finished, token_ids=ids))
    return out


def expert_weights(svf, experts: Sequence):
    """Per-row experts for one batch: :meth:`SVFModel.weights_for <transformer_squared.svf.SVFModel.weights_for>`."""
    return svf.weights_for(experts)


def _trim(ids: list[int], tokenizer) -> list[int]:
    """Cut a generated row at its first EOS (kept) and drop the padding after it."""
    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[: i + 1]
    return ids


def _apply_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]
