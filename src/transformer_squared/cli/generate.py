"""``t2 generate`` and ``t2 chat``: answer prompts with self-adaptation, showing each route."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import T2Error
from .common import add_model_args


def _add_adapt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experts", nargs="*", default=[], metavar="DIR", help="task expert folders")
    p.add_argument(
        "--adapt",
        default="prompt",
        choices=["none", "prompt", "classifier", "probe", "fewshot"],
        help="first-pass strategy (default: prompt)",
    )
    p.add_argument("--classifier", default=None, metavar="DIR", help="classification expert (--adapt classifier)")
    p.add_argument("--router", default=None, metavar="DIR", help="early-layer probe router (--adapt probe)")
    p.add_argument("--mixture", default=None, metavar="DIR", help="a mixture from t2 eval --adapt fewshot")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8)
    add_model_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer prompts, each routed to an expert by the first pass")
    p.add_argument("prompts", nargs="+", help="one or more requests (use - to read one per line from stdin)")
    _add_adapt_args(p)
    p.set_defaults(func=run_generate)
    c = sub.add_parser("chat", help="interactive loop: each message is routed, then answered")
    _add_adapt_args(c)
    c.set_defaults(func=run_chat)


def build(args: argparse.Namespace):
    from ..adapt import AdaptiveModel
    from ..experts import Expert
    from .common import load_svf

    experts = [Expert.load(d) for d in args.experts]
    classifier = Expert.load(args.classifier) if args.classifier else None
    mixture = Expert.load(args.mixture) if args.mixture else None
    if args.adapt != "none" and not experts and not mixture:
        raise T2Error(f"--adapt {args.adapt} needs --experts DIR ... (or use --adapt none)")
    router = None
    if args.router:
        from ..probe import ProbeRouter

        router = ProbeRouter.load(args.router)
    _, tokenizer, svf = load_svf(args, progress=False)
    return AdaptiveModel(
        svf, tokenizer, experts, strategy=args.adapt, classifier=classifier, mixture=mixture, router=router
    )


def run_generate(args: argparse.Namespace) -> int:
    prompts = [line.strip() for line in sys.stdin if line.strip()] if args.prompts == ["-"] else args.prompts
    if not prompts:
        raise T2Error("no prompts given")
    am = build(args)
    t = time.perf_counter()
    out = am.generate(
        prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, batch_size=args.batch_size
    )
    total = time.perf_counter() - t
    for prompt, (route, gen) in zip(prompts, out, strict=True):
        print(f"### {prompt}\n[route: {route.describe()}]\n{gen.text.strip()}\n")
    first = am.stats["first_pass_seconds"]
    print(f"first pass {first:.2f}s, second pass {total - first:.2f}s for {len(prompts)} prompt(s)")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    am = build(args)
    print("t2 chat: each message is routed to an expert, then answered. Ctrl-D or /exit to quit.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        ((route, gen),) = am.generate([line], max_new_tokens=args.max_new_tokens, temperature=args.temperature)
        print(f"[{route.describe()}]\n{gen.text.strip()}")
