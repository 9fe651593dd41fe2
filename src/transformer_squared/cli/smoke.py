"""``t2 smoke``: wrap a model with SVF, apply a random expert, generate, compare with base."""

from __future__ import annotations

import argparse
import sys
import time

from .common import add_model_args, load_svf

QUESTIONS = [
    "What is 12 times 7? Answer briefly.",
    "Write a Python function that returns the square of a number.",
    "Which is heavier, a kilogram of iron or a kilogram of feathers?",
]

# Measured with `time t2 smoke` on 2 CPU cores (2026-11-30): 35 s with an empty cache (GGUF conversion,
# SVD of the 90 MLP matrices, imports), about 12 s once both are cached; with other jobs on the cores
# (load 7) a cold run took 5 minutes.
ESTIMATE_COLD_S, ESTIMATE_WARM_S = 35, 12


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smoke", help="SVF smoke test: random expert vs base on a few prompts")
    add_model_args(p)
    p.add_argument("--scale", type=float, default=0.1, help="std of the random z perturbation")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the step lines stay)")
    p.set_defaults(func=run)


def estimate(model: str) -> str:
    """A one-line time estimate: measured numbers for the bundled default, none for other models."""
    from ..models import default_model_cached, is_default

    if not is_default(model):
        return "time depends on the model's size (the SVD of its target matrices is cached after the first run)"
    if default_model_cached():
        return (
            f"about {ESTIMATE_WARM_S} s on 2 idle CPU cores (the converted default model is cached; "
            "longer when other jobs share the cores)"
        )
    return (
        f"about {ESTIMATE_COLD_S} s on 2 idle CPU cores this first time (converting the bundled model and "
        f"taking its SVD, both cached for next time; then about {ESTIMATE_WARM_S} s); longer when other "
        "jobs share the cores"
    )


class Steps:
    """Numbered step lines with the seconds each took, so a slow stage is visible as it runs."""

    def __init__(self, total: int) -> None:
        self.total, self.i, self.t0, self.start = total, 0, 0.0, time.perf_counter()

    def begin(self, text: str) -> None:
        self.i += 1
        self.t0 = time.perf_counter()
        print(f"[{self.i}/{self.total}] {text} ...", flush=True)

    def end(self, text: str = "") -> float:
        secs = time.perf_counter() - self.t0
        print(f"      done in {secs:.1f}s{'; ' + text if text else ''}", flush=True)
        return secs

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation import generate

    steps = Steps(4)
    print(f"t2 smoke: 4 steps, {estimate(args.model)}", flush=True)
    steps.begin(f"loading {args.model!r} and wrapping it with SVF")
    model, tokenizer, svf = load_svf(args, progress=not args.no_progress)
    steps.end(str(svf))
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        if tokenizer.chat_template
        else q
        for q in QUESTIONS
    ]
    steps.begin(f"base model: {len(prompts)} answers of up to {args.max_new_tokens} tokens")
    with svf.disabled():
        base = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    t_base = steps.end()
    steps.begin(f"random expert (z = 1 + N(0, {args.scale}²)): the same {len(prompts)} answers")
    gen = torch.Generator().manual_seed(args.seed)
    svf.load_state({n: z + torch.randn(z.shape, generator=gen) * args.scale for n, z in svf.state().items()})
    expert = svf.to_expert("random", task=None)
    adapted = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    t_adapted = steps.end()
    steps.begin("logits of the expert and of the base model, then after svf.reset()")
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        la = model(**inputs).logits
        with svf.disabled():
            lb = model(**inputs).logits
    svf.reset()
    with torch.no_grad():
        lr = model(**inputs).logits
    steps.end()
    for q, b, a in zip(QUESTIONS, base, adapted, strict=True):
        print(f"\n### {q}\n  base:    {b.text.strip()[:200]!r}\n  adapted: {a.text.strip()[:200]!r}")
    print(
        f"\nrandom expert: {expert.num_parameters():,} numbers; mean |Δlogit| vs base "
        f"{(la - lb).abs().mean():.3f}; generation {t_base:.1f}s base, {t_adapted:.1f}s adapted"
    )
    gap = float((lr - lb).abs().max())
    print(f"after reset: max |Δlogit| vs base = {gap:.2e}")
    print(f"total {steps.elapsed():.1f}s")
    if gap > 1e-4:
        print("t2 smoke: error: after reset the model does not give the base model's logits", file=sys.stderr)
        return 1
    return 0
