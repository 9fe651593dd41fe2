"""``t2 train``: train an SVF expert (or the LoRA baseline) on a task with REINFORCE or SFT.

Thin: parses the options into a :class:`~transformer_squared.training.TrainConfig` and calls
:func:`~transformer_squared.training.train`. The options are built from TrainConfig's fields
(:mod:`.config_args`); this file only says how they are grouped. The same command runs under ``torchrun``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from .common import add_data_args, add_model_args, data_task, parse_targets
from .config_args import add_dataclass_arguments, fill_defaults, remember_defaults
from .config_args import config_from_args as build_config

EPILOG = """\
examples:
  t2 train --task arc_easy --out experts/arc_easy --steps 100
  t2 train --task gsm8k --out runs/gsm8k-lora --method lora --objective sft
  t2 train --task arc_easy --out experts/arc_easy --resume          # after an interruption
  torchrun --nproc_per_node 2 -m transformer_squared.cli train --task arc_easy --out experts/arc_easy

Files in --out: the best expert (expert.safetensors + expert.json; LoRA: a PEFT adapter folder),
metrics.jsonl, train_curve.png, train_config.json, checkpoint/. See docs/training.md."""


# The TrainConfig fields shown in each help group, in order. Each option's flag, type, default,
# choices and help come from its field (training/config.py); model, dtype, device, targets and
# parameterization come from add_model_args, shared with the other commands.
OPTIONS = ["task", "out", "source", "name"]
GROUPS = {
    "what is trained": [
        "method",
        "objective",
        "channel",
        "norm",
        "train_path",
        "lora_rank",
        "lora_alpha",
        "lora_targets",
    ],
    "steps and batches": ["steps", "batch_size", "samples_per_prompt", "grad_accum", "gen_prompts"],
    "optimisation": [
        "lr",
        "weight_decay",
        "schedule",
        "warmup_steps",
        "clip",
        "kl_coef",
        "kl_estimator",
        "baseline",
        "temperature",
        "top_p",
        "max_new_tokens",
        "autocast",
        "sample_autocast",
        "share_prompt",
        "reward_correct",
        "reward_wrong",
        "seed",
    ],
    "validation and files": [
        "eval_every",
        "eval_at_start",
        "val_limit",
        "eval_batch_size",
        "checkpoint_every",
        "resume",
        "overwrite",
        "tensorboard",
        "progress",
    ],
}
# Where the command line differs from the Python defaults: --task or --data is asked for, --out
# is required, and --resume takes an optional folder.
OVERRIDES: dict[str, dict[str, Any]] = {
    "task": {"default": None},
    "out": {"required": True},
    "resume": {"nargs": "?", "const": "auto", "metavar": "DIR"},
}
# Command-line value -> TrainConfig value, where they differ.
CONVERT = {"targets": parse_targets, "val_limit": lambda n: n or None}  # --val-limit 0: all


def register(sub: argparse._SubParsersAction) -> None:
    from ..training import TrainConfig

    p = sub.add_parser(
        "train",
        help="train an SVF expert (or LoRA baseline) with RL or SFT",
        description="REINFORCE on the task's checker (the paper), or supervised fine-tuning on "
        "reference solutions; the best weights on the val split are kept.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataclass_arguments(p, TrainConfig, OPTIONS, OVERRIDES)
    add_model_args(p)
    add_data_args(p)
    for title, names in GROUPS.items():
        add_dataclass_arguments(p.add_argument_group(title), TrainConfig, names, OVERRIDES)
    p.set_defaults(func=run)
    remember_defaults(p)  # last: covers every option above


# Options a resumed run never takes from the saved run: where it runs and how it reports.
NOT_REUSED = {"out", "resume", "overwrite", "progress"}


def reuse_saved_options(config, given: set[str]):
    """``config`` with each option the user did not give taken from the run being resumed.

    So ``t2 train --task T --out D --resume`` continues the run that ``t2 train ... --out D`` started
    with its own options; an option given again wins (and the trainer refuses one that would change
    what the run computes).
    """
    from ..training.run_dir import saved_config

    path, saved = saved_config(config)
    if not saved:
        return config
    names = {f.name for f in dataclasses.fields(config)}
    taken = []
    for name, value in saved.items():
        if name in NOT_REUSED or name in given or name not in names:
            continue
        if getattr(config, name) != value:
            setattr(config, name, value)
            taken.append(name)
    if taken:
        shown = " ".join(f"--{n.replace('_', '-')} {getattr(config, n)}" for n in taken)
        print(f"t2 train: resuming with the options saved in {path}: {shown}", file=sys.stderr)
    return config


def config_from_args(args: argparse.Namespace):
    """The :class:`~transformer_squared.training.TrainConfig` an argument namespace describes."""
    from ..training import TrainConfig

    return build_config(args, TrainConfig, CONVERT)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    given = fill_defaults(args)
    task = data_task(args, args.reward_correct, args.reward_wrong)  # --data: the user's task (None with --task)
    config = config_from_args(args)
    if config.resume not in (None, False):
        config = reuse_saved_options(config, given)
    result = train(config) if task is None else train(config, task=task)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if task is not None:
        from ..tasks.generic import stamp_domain

        stamp_domain(result.out, task)
    if result.best_val_accuracy is not None:
        print(
            f"{result.out}: best val accuracy {result.best_val_accuracy:.1%} at step {result.best_step} "
            f"({result.steps} steps, {result.seconds:.0f}s, {result.trainable_params:,} trainable parameters)"
        )
    else:
        print(
            f"{result.out}: weights of step {result.steps} ({result.seconds:.0f}s, "
            f"{result.trainable_params:,} trainable parameters)"
        )
    return 0
