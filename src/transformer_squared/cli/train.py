"""``t2 train``: train an SVF expert (or the LoRA baseline) on a task with REINFORCE or SFT.

Thin: parses the options into a :class:`~transformer_squared.training.TrainConfig` and calls
:func:`~transformer_squared.training.train`. The same command runs under ``torchrun``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .common import add_data_args, add_model_args, data_task, parse_targets

EPILOG = """\
examples:
  t2 train --task arc_easy --out experts/arc_easy --steps 100
  t2 train --task gsm8k --out runs/gsm8k-lora --method lora --objective sft
  t2 train --task arc_easy --out experts/arc_easy --resume          # after an interruption
  torchrun --nproc_per_node 2 -m transformer_squared.cli train --task arc_easy --out experts/arc_easy

Files in --out: the best expert (expert.safetensors + expert.json; LoRA: a PEFT adapter folder),
metrics.jsonl, train_curve.png, train_config.json, checkpoint/. See docs/training.md."""


def register(sub: argparse._SubParsersAction) -> None:
    from ..training.config import AUTO_MICRO_ROWS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train an SVF expert (or LoRA baseline) with RL or SFT",
                       description="REINFORCE on the task's checker (the paper), or supervised fine-tuning on "
                                   "reference solutions; the best weights on the val split are kept.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=None, help="gsm8k, mbpp, arc_easy, classify (tasks with a train split); or --data")
    p.add_argument("--out", required=True, help="output folder (the expert, metrics, plot, checkpoint)")
    p.add_argument("--source", default=d.source, help="offline (bundled data), hub, or a JSONL file")
    p.add_argument("--name", default=None, help="expert name (default: the task name)")
    add_model_args(p)
    add_data_args(p)
    m = p.add_argument_group("what is trained")
    m.add_argument("--method", default=d.method, choices=["svf", "lora"], help="svf (default) or the LoRA baseline")
    m.add_argument("--objective", default=d.objective, choices=["rl", "sft", "exact"],
                   help="rl: REINFORCE on the task's reward (default); sft: imitate the reference solutions; "
                        "exact: exact policy gradient over a multiple-choice task's options (no sampling)")
    m.add_argument("--channel", default=d.channel, choices=["cloze", "letter"],
                   help="multiple choice: score options as text after 'Question: ...\\nAnswer:' (cloze; the default "
                        "of exact) or as the first letter after the chat prompt (letter, what generation samples); "
                        "with sft: imitate the gold option in that channel")
    m.add_argument("--norm", default=d.norm, choices=["token", "char", "sum"],
                   help="exact: option score = log-likelihood per token (default), per character, or summed")
    m.add_argument("--train-path", default=d.train_path, choices=["merged", "factored"],
                   help="SVF forward used for the gradient (same result; factored was as fast or faster here, see docs)")
    m.add_argument("--lora-rank", type=int, default=d.lora_rank)
    m.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    m.add_argument("--lora-targets", default=",".join(d.lora_targets), help="comma-separated module names")
    s = p.add_argument_group("steps and batches")
    s.add_argument("--steps", type=int, default=d.steps)
    s.add_argument("--batch-size", type=int, default=d.batch_size, help="prompts per step, over all processes")
    s.add_argument("--samples-per-prompt", "-k", type=int, default=d.samples_per_prompt,
                   help="K completions sampled per prompt (RL)")
    s.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help=f"micro-batches per process and step (0: auto, ≤ {AUTO_MICRO_ROWS} completions each)")
    s.add_argument("--gen-prompts", type=int, default=d.gen_prompts,
                   help="prompts per generate call (default 1: samples independent of batching and processes)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=d.lr)
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--schedule", default=d.schedule, choices=["constant", "cosine"])
    o.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    o.add_argument("--clip", type=float, default=d.clip, help="max gradient norm (0: off; the paper: 1e-3)")
    o.add_argument("--kl-coef", type=float, default=d.kl_coef, help="λ of the KL(π‖π_base) penalty (0: off)")
    o.add_argument("--kl-estimator", default=d.kl_estimator, choices=["k3", "full"],
                   help="k3: per sampled token (default); full: exact over the vocabulary")
    o.add_argument("--baseline", default=d.baseline, choices=["none", "mean", "loo"],
                   help="none: A = r (the paper); mean: r − prompt mean; loo: r − mean of the other samples")
    o.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (0: greedy)")
    o.add_argument("--top-p", type=float, default=d.top_p)
    o.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    o.add_argument("--autocast", default=d.autocast, choices=["none", "bf16"],
                   help="bf16 autocast for the teacher-forced forwards (see docs/training.md)")
    o.add_argument("--no-share-prompt", action="store_true",
                   help="re-encode the prompt for each of its K samples (the slower layout; same gradients)")
    o.add_argument("--reward-correct", type=float, default=d.reward_correct)
    o.add_argument("--reward-wrong", type=float, default=d.reward_wrong)
    o.add_argument("--seed", type=int, default=d.seed)
    e = p.add_argument_group("validation and files")
    e.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="evaluate on val every N steps and keep the best (0: keep the last weights)")
    e.add_argument("--no-eval-at-start", action="store_true", help="skip the step-0 evaluation of the base model")
    e.add_argument("--val-limit", type=int, default=d.val_limit, help="first N val items (0: all)")
    e.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    e.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="0: only at the end")
    e.add_argument("--resume", nargs="?", const="auto", default=None, metavar="DIR",
                   help="continue from the checkpoint in --out (or in DIR)")
    e.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a run")
    e.add_argument("--tensorboard", action="store_true", help="also log to <out>/tensorboard (needs tensorboard)")
    e.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    _remember_defaults(p)  # last: covers every option above


# Options a resumed run never takes from the saved run: where it runs and how it reports.
NOT_REUSED = {"out", "resume", "overwrite", "progress"}
# Command-line option (argparse dest) -> TrainConfig field, where the names differ.
DEST_TO_FIELD = {"no_eval_at_start": "eval_at_start", "no_progress": "progress"}


def _remember_defaults(p: argparse.ArgumentParser) -> None:
    """Keep the defaults aside so that ``run`` knows which options the user gave (for --resume)."""
    defaults = {}
    for action in p._actions:
        if action.dest in (argparse.SUPPRESS, "help") or action.default is argparse.SUPPRESS:
            continue
        defaults[action.dest] = action.default
        action.default = argparse.SUPPRESS  # absent from the namespace unless given
    p.set_defaults(_defaults=defaults)


def _fill_defaults(args: argparse.Namespace) -> set[str]:
    """Put the defaults back into ``args``; the names of the options given on the command line."""
    defaults = getattr(args, "_defaults", {})
    given = {dest for dest in defaults if hasattr(args, dest)}
    for dest, value in defaults.items():
        if dest not in given:
            setattr(args, dest, value)
    return given


def saved_config(config) -> tuple[Path | None, dict]:
    """The ``config`` written to train_config.json by the run that ``config.resume`` continues."""
    from ..training.run_dir import CONFIG_NAME

    where = Path(config.out) if config.resume is True or str(config.resume) == "auto" else Path(config.resume)
    for folder in (where, where.parent):
        path = folder / CONFIG_NAME
        if path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8")).get("config")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                return path, {}
            return path, saved if isinstance(saved, dict) else {}
    return None, {}


def reuse_saved_options(config, given: set[str]):
    """``config`` with each option the user did not give taken from the run being resumed.

    So ``t2 train --task T --out D --resume`` continues the run that ``t2 train ... --out D`` started
    with its own options; an option given again wins (and the trainer refuses one that would change
    what the run computes).
    """
    path, saved = saved_config(config)
    if not saved:
        return config
    given_fields = {DEST_TO_FIELD.get(dest, dest) for dest in given}
    names = {f.name for f in dataclasses.fields(config)}
    taken = []
    for name, value in saved.items():
        if name in NOT_REUSED or name in given_fields or name not in names:
            continue
        if getattr(config, name) != value:
            setattr(config, name, value)
            taken.append(name)
    if taken:
        shown = " ".join(f"--{n.replace('_', '-')} {getattr(config, n)}" for n in taken)
        print(f"t2 train: resuming with the options saved in {path}: {shown}", file=sys.stderr)
    return config


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` an argument namespace describes."""
    from ..training import TrainConfig

    return TrainConfig(
        task=args.task, out=args.out, source=args.source, model=args.model, dtype=args.dtype, device=args.device,
        method=args.method, objective=args.objective, channel=args.channel, norm=args.norm,
        targets=parse_targets(args.targets),
        parameterization=args.parameterization, train_path=args.train_path, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_targets=[t.strip() for t in args.lora_targets.split(",") if t.strip()],
        steps=args.steps, batch_size=args.batch_size, samples_per_prompt=args.samples_per_prompt, lr=args.lr,
        weight_decay=args.weight_decay, kl_coef=args.kl_coef, kl_estimator=args.kl_estimator,
        baseline=args.baseline, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, grad_accum=args.grad_accum, gen_prompts=args.gen_prompts,
        schedule=args.schedule, warmup_steps=args.warmup_steps, clip=args.clip, eval_every=args.eval_every,
        eval_at_start=not args.no_eval_at_start, val_limit=args.val_limit or None,
        eval_batch_size=args.eval_batch_size, checkpoint_every=args.checkpoint_every, resume=args.resume,
        overwrite=args.overwrite, name=args.name, seed=args.seed, autocast=args.autocast,
        share_prompt=not args.no_share_prompt,
        reward_correct=args.reward_correct, reward_wrong=args.reward_wrong, progress=not args.no_progress,
        tensorboard=args.tensorboard,
    )


def run(args: argparse.Namespace) -> int:
    from ..training import train

    given = _fill_defaults(args)
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
        print(f"{result.out}: best val accuracy {result.best_val_accuracy:.1%} at step {result.best_step} "
              f"({result.steps} steps, {result.seconds:.0f}s, {result.trainable_params:,} trainable parameters)")
    else:
        print(f"{result.out}: weights of step {result.steps} ({result.seconds:.0f}s, "
              f"{result.trainable_params:,} trainable parameters)")
    return 0
