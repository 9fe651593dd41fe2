"""``t2 import sakana``: z vectors from the paper's reference implementation as an expert folder."""

from __future__ import annotations

import argparse

from .common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="read experts saved by other implementations")
    kinds = p.add_subparsers(dest="import_kind", metavar="FORMAT", required=True)
    s = kinds.add_parser("sakana", help="z vectors saved by the reference Transformer² code (torch.save)")
    s.add_argument("file", help="the .pt file: a ParameterList state dict or a dict weight name -> z")
    s.add_argument("--out", required=True, metavar="DIR", help="the expert folder to write")
    s.add_argument("--name", default=None, help="expert name (default: the file's stem)")
    s.add_argument(
        "--max-mult", type=float, default=1.0, help="the reference's max_mult the vectors were trained with (default 1)"
    )
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_model_args(s, targets=False)
    s.add_argument("--targets", default="mlp", help="the matrices the vectors adapt (the reference: mlp)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..fileio import refuse_existing
    from ..import_reference import import_reference
    from ..models import load_model
    from ..svf import Parameterization, SVFModel
    from .common import parse_targets

    out = refuse_existing(args.out, args.overwrite)
    model, _ = load_model(args.model, dtype=args.dtype, device=args.device)
    svf = SVFModel(
        model,
        targets=parse_targets(args.targets),
        parameterization=Parameterization(kind="sigmoid", max_mult=args.max_mult),
    )
    expert = import_reference(args.file, svf, name=args.name)
    expert.save(out)
    print(
        f"imported {len(expert.z)} vectors ({expert.num_parameters():,} values) from {args.file} "
        f"as expert {expert.name!r} in {out} (sigmoid parameterization, max_mult {args.max_mult:g})"
    )
    return 0
