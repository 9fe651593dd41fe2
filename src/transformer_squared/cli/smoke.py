"""``t2 smoke``: wrap a model with SVF, apply a random expert, generate, compare with base."""

from __future__ import annotations

import argparse
import time

from .common import add_model_args, load_svf

QUESTIONS = [
    "What is 12 times 7? Answer briefly.",
    "Write a Python function that returns the square of a number.",
    "Which is heavier, a kilogram of iron or a kilogram of feathers?",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smoke", help="SVF smoke test: random expert vs base on a few prompts")
    add_model_args(p)
    p.add_argument("--scale", type=float, default=0.1, help="std of the random z perturbation")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation import generate

    t0 = time.perf_counter()
    model, tokenizer, svf = load_svf(args)
    print(f"{svf}  (loaded and wrapped in {time.perf_counter() - t0:.1f}s)")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) if tokenizer.chat_template else q
               for q in QUESTIONS]
    with svf.disabled():
        t = time.perf_counter()
        base = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
        t_base = time.perf_counter() - t
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * args.scale)
    expert = svf.to_expert("random", task=None)
    t = time.perf_counter()
    adapted = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    t_adapted = time.perf_counter() - t
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        la = model(**inputs).logits
        with svf.disabled():
            lb = model(**inputs).logits
    for q, b, a in zip(QUESTIONS, base, adapted, strict=True):
        print(f"\n### {q}\n  base:    {b.text.strip()[:200]!r}\n  adapted: {a.text.strip()[:200]!r}")
    print(f"\nrandom expert: {expert.num_parameters():,} numbers; mean |Δlogit| vs base "
          f"{(la - lb).abs().mean():.3f}; generation {t_base:.1f}s base, {t_adapted:.1f}s adapted")
    svf.reset()
    with torch.no_grad():
        lr = model(**inputs).logits
    print(f"after reset: max |Δlogit| vs base = {(lr - lb).abs().max():.2e}")
    return 0
