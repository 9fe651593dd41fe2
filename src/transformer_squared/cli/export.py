"""``t2 export``: an expert as a plain merged checkpoint or as a PEFT LoRA adapter."""

from __future__ import annotations

import argparse

from .common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write an expert as a merged checkpoint or a LoRA adapter for other engines")
    p.add_argument("--expert", required=True, metavar="DIR")
    p.add_argument("--format", choices=["merged", "lora"], default="lora")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: full rank, exact)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="allow an expert made on other weights (same shapes)")
    add_model_args(p, targets=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experts import Expert
    from ..export import export_lora, export_merged
    from ..models import load_model
    from ..svf import SVFModel

    expert = Expert.load(args.expert)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    svf = SVFModel(model, targets=expert.meta.get("targets", "mlp"), parameterization=expert.parameterization)
    if args.format == "merged":
        export_merged(svf, expert, args.out, tokenizer=tokenizer, strict=not args.force)
        print(f"wrote a merged checkpoint of {expert.name!r} to {args.out} (load it with from_pretrained)")
    else:
        report = export_lora(svf, expert, args.out, rank=args.rank, strict=not args.force)
        print(f"wrote a LoRA adapter of {expert.name!r} to {args.out}: rank {report['rank']}, "
              f"{report['matrices']} matrices, max relative error {report['max_relative_error']:.2e}")
    return 0
