"""``t2 export merged|lora``: experts for engines that know nothing about SVF."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import T2Error
from .common import add_model_args

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

VLLM_MAX_LORA_RANK = 512  # vLLM's --max-lora-rank takes one of 8, 16, 32, 64, 128, 256, 320, 512

# A few short prompts for the logits check after a LoRA export.
CHECK_PROMPTS = [
    "What is 12 times 7?",
    "Write a Python function that reverses a string.",
    "Which gas do plants take in from the air?",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write an expert as a merged checkpoint or a PEFT LoRA adapter")
    kinds = p.add_subparsers(dest="export_kind", metavar="FORMAT", required=True)

    m = kinds.add_parser("merged", help="a plain transformers checkpoint with the expert merged into W")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--expert", metavar="DIR", help="an expert folder (a saved mixture works too)")
    src.add_argument(
        "--mix",
        nargs="+",
        metavar="DIR=WEIGHT",
        help="merge the mixture Σ weight·z of these experts, e.g. experts/math=0.7 experts/code=0.3",
    )
    _common(m)
    m.set_defaults(func=run_merged)

    lo = kinds.add_parser("lora", help="a PEFT LoRA adapter (exact at full rank) for vLLM, TGI, PEFT ...")
    lo.add_argument("--expert", metavar="DIR", required=True)
    lo.add_argument(
        "--rank",
        type=int,
        default=None,
        help="LoRA rank R (default: full rank, exact); prints the error R costs. vLLM serves R ≤ 512",
    )
    _common(lo)
    lo.set_defaults(func=run_lora)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--transfer",
        action="store_true",
        help="the expert was trained on another model with the same shapes: pair its vectors "
        "with this model's matrices in layer order",
    )
    add_model_args(p, targets=False)


def parse_mix(specs: list[str]):
    """Experts and weights from ``DIR=WEIGHT`` strings."""
    from ..experts import Expert

    experts, weights = [], []
    for spec in specs:
        path, sep, w = spec.rpartition("=")
        if not sep or not path:
            raise T2Error(f"--mix takes DIR=WEIGHT, got {spec!r}")
        try:
            weights.append(float(w))
        except ValueError:
            raise T2Error(f"--mix {spec!r}: {w!r} is not a number") from None
        experts.append(Expert.load(path))
    return Expert.mix(experts, weights, name="+".join(f"{w:g}*{e.name}" for e, w in zip(experts, weights, strict=True)))


def _load(args: argparse.Namespace, expert):
    from ..models import load_model
    from ..svf import SVFModel

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    svf = SVFModel.from_expert(model, expert)
    return svf, tokenizer


def run_merged(args: argparse.Namespace) -> int:
    from ..experts import Expert
    from ..export import export_merged

    expert = Expert.load(args.expert) if args.expert else parse_mix(args.mix)
    svf, tokenizer = _load(args, expert)
    export_merged(svf, expert, args.out, tokenizer=tokenizer, strict=not args.transfer, overwrite=args.overwrite)
    print(
        f"wrote a merged checkpoint of {expert.name!r} to {args.out} "
        "(load it with AutoModelForCausalLM.from_pretrained, or serve it with vLLM / lm-eval as a plain model)"
    )
    print_files(args.out)
    return 0


def print_files(folder) -> None:
    """What an export wrote, largest file first, and the total size."""
    from ..export import folder_files, human_size

    files = folder_files(folder)
    total = sum(size for _, size in files)
    print(f"{folder}: {len(files)} files, {human_size(total)}")
    for name, size in files:
        print(f"  {human_size(size):>9}  {name}")


def run_lora(args: argparse.Namespace) -> int:
    from ..experts import Expert
    from ..export import export_lora

    expert = Expert.load(args.expert)
    svf, tokenizer = _load(args, expert)
    ids = _check_ids(tokenizer)
    report = export_lora(
        svf, expert, args.out, rank=args.rank, strict=not args.transfer, overwrite=args.overwrite, input_ids=ids
    )
    errors = report["errors"]
    if args.rank is not None:
        width = max(len(n) for n in errors)
        print("relative error ‖ΔW − ΔW_R‖/‖ΔW‖ per matrix:")
        for n, e in errors.items():
            print(f"  {n:<{width}}  {e:.3e}")
    print(
        f"wrote a LoRA adapter of {expert.name!r} to {args.out}: rank {report['rank']}, "
        f"{report['matrices']} matrices; relative error total {report['total_relative_error']:.3e}, "
        f"worst matrix {report['max_relative_error']:.3e}"
    )
    if "logits_max_abs_diff" in report:
        print(
            f"logits of the adapter vs the SVF expert on {len(CHECK_PROMPTS)} prompts: "
            f"max |Δ| {report['logits_max_abs_diff']:.3e}, mean |Δ| {report['logits_mean_abs_diff']:.3e}"
        )
    print(f"adapter_config.json names the base model {report['base_model_name_or_path']!r}")
    if report.get("base_weights"):
        print(f"note: {report['base_weights']}")
    print_files(args.out)
    if report["rank"] > VLLM_MAX_LORA_RANK:
        print(
            f"note: rank {report['rank']} is above {VLLM_MAX_LORA_RANK}, the largest LoRA rank vLLM serves; for vLLM "
            f"export with --rank {VLLM_MAX_LORA_RANK} or less (the error it costs is printed), or use "
            "`t2 export merged` (exact)"
        )
    return 0


def _check_ids(tokenizer: PreTrainedTokenizerBase):
    if tokenizer is None:
        return None
    import torch

    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in CHECK_PROMPTS]
    n = min(len(r) for r in rows)
    if n == 0:
        return None
    return torch.tensor([r[:n] for r in rows])
