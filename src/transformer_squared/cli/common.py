"""Options shared by several ``t2`` commands (model, dtype, targets) and how to act on them."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser, targets: bool = True) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="default",
                   help="'default' (bundled SmolLM2-135M-Instruct), a local folder or a Hub id")
    g.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    if targets:
        g.add_argument("--targets", default="mlp",
                       help="mlp (default, the paper), attn, all-linear, or comma-separated regexes")
        g.add_argument("--parameterization", default="direct", choices=["direct", "sigmoid"],
                       help="direct: g = z (the paper); sigmoid: the reference code's")


def parse_targets(value: str) -> str | list[str]:
    if value in ("mlp", "attn", "all-linear"):
        return value
    return [p.strip() for p in value.split(",") if p.strip()]


def load_svf(args: argparse.Namespace, progress: bool = True):
    """(model, tokenizer, svf) from the common options."""
    from ..models import load_model
    from ..svf import SVFModel

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=progress)
    svf = SVFModel(model, targets=parse_targets(args.targets), parameterization=args.parameterization,
                   progress=progress)
    return model, tokenizer, svf
