"""``t2 demo``: the default model with the shipped experts on mixed held-out questions."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="self-adaptive answers to mixed held-out questions with the shipped experts")
    p.add_argument("--experts-dir", default="experts", help="folder holding math/, code/, reasoning/, classify/")
    p.add_argument("--per-task", type=int, default=4, help="questions from each of GSM8K, MBPP and ARC-Easy")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--model", default="default")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.experts_dir, per_task=args.per_task, model_name=args.model, max_new_tokens=args.max_new_tokens)
    return 0
