"""``t2 transfer``: re-key an expert for another model with the same matrix shapes (layer order)."""

from __future__ import annotations

import argparse

from .common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transfer", help="use an expert trained on one model on another with the same shapes")
    p.add_argument("--expert", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="the re-keyed expert folder")
    p.add_argument("--name", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_model_args(p, targets=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experts import Expert
    from ..fileio import refuse_existing
    from ..models import load_model
    from ..svf import SVFModel

    out = refuse_existing(args.out, args.overwrite)
    expert = Expert.load(args.expert)
    model, _ = load_model(args.model, dtype=args.dtype, device=args.device)
    svf = SVFModel.from_expert(model, expert)
    moved = expert.transfer(svf, name=args.name)
    moved.save(out)
    print(
        f"transferred {expert.name!r} ({len(moved.z)} vectors, paired in layer order) from "
        f"{expert.meta.get('base_model')!r} to {moved.meta.get('base_model')!r}: {out}"
    )
    return 0
