"""``t2 info``: what SVF would adapt on a model; ``t2 expert show``: what an expert folder holds."""

from __future__ import annotations

import argparse
import json

from .common import add_model_args, load_svf


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show the target matrices and trainable parameters of a model")
    add_model_args(p)
    p.add_argument("--list", action="store_true", help="list every target matrix")
    p.set_defaults(func=run_info)

    p = sub.add_parser("expert", help="inspect or mix expert folders")
    esub = p.add_subparsers(dest="expert_command", metavar="ACTION", required=True)
    s = esub.add_parser("show", help="print an expert's metadata and size")
    s.add_argument("path")
    s.set_defaults(func=run_expert_show)
    m = esub.add_parser(
        "mix", help="write a weighted mixture of experts (z' = 1 + Σ α_k (z_k − 1), relative to the base)"
    )
    m.add_argument("paths", nargs="+")
    m.add_argument("--weights", required=True, help="comma-separated, one per expert")
    m.add_argument("--out", required=True)
    m.set_defaults(func=run_expert_mix)
    c = esub.add_parser("copy", help="copy an expert folder (e.g. out of a training run), optionally renamed")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--name", default=None, help="the copy's name (default: the source's)")
    c.add_argument("--domain", default=None, help="the routing label (default: from its task)")
    c.add_argument("--overwrite", action="store_true", help="replace dst if it holds an expert")
    c.set_defaults(func=run_expert_copy)


def run_info(args: argparse.Namespace) -> int:
    from ..models import model_name

    model, _, svf = load_svf(args)
    print(svf)
    print(f"model: {model_name(model, args.model)}  fingerprint: {svf.fingerprint}")
    print(f"base parameters: {sum(p.numel() for p in model.parameters()):,}")
    print(f"trainable (z): {svf.num_trainable_parameters():,} in {len(svf.layers)} matrices")
    if args.list:
        for name, layer in svf.layers.items():
            print(f"  {name}  {layer.out_features}x{layer.in_features}  rank {layer.rank}")
    return 0


def run_expert_show(args: argparse.Namespace) -> int:
    from ..experts import Expert

    expert = Expert.load(args.path)
    meta = {k: v for k, v in expert.meta.items() if k != "matrix_fingerprints"}
    print(repr(expert))
    print(json.dumps(meta, indent=2))
    return 0


def run_expert_mix(args: argparse.Namespace) -> int:
    from ..errors import T2Error
    from ..experts import Expert

    experts = [Expert.load(p) for p in args.paths]
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise T2Error(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
    if len(weights) != len(experts):
        raise T2Error(f"{len(experts)} experts but {len(weights)} weights")
    mixed = Expert.mix(experts, weights, name=args.out.rstrip("/").split("/")[-1])
    mixed.save(args.out)
    print(f"wrote {mixed!r} to {args.out}")
    return 0


def run_expert_copy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import T2Error
    from ..experts import CONFIG_NAME, Expert

    expert = Expert.load(args.src)
    if (Path(args.dst) / CONFIG_NAME).exists() and not args.overwrite:
        raise T2Error(f"{args.dst!r} already holds an expert; pass --overwrite to replace it")
    if args.name:
        expert.meta["name"] = args.name
    if args.domain:
        expert.meta["domain"] = args.domain
    expert.save(args.dst)
    print(f"wrote {expert!r} to {args.dst}")
    return 0
