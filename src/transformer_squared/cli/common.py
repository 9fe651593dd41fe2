"""Options shared by several ``t2`` commands (model, dtype, targets) and how to act on them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.base import Task


def add_model_args(parser: argparse.ArgumentParser, targets: bool = True) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model", default="default", help="'default' (bundled SmolLM2-135M-Instruct), a local folder or a Hub id"
    )
    g.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    if targets:
        g.add_argument(
            "--targets", default="mlp", help="mlp (default, the paper), attn, all-linear, or comma-separated regexes"
        )
        g.add_argument(
            "--parameterization",
            default="direct",
            choices=["direct", "sigmoid"],
            help="direct: g = z (the paper); sigmoid: the reference code's",
        )


def parse_targets(value: str) -> str | list[str]:
    if value in ("mlp", "attn", "all-linear"):
        return value
    return [p.strip() for p in value.split(",") if p.strip()]


def load_svf(args: argparse.Namespace, progress: bool = True):
    """(model, tokenizer, svf) from the common options."""
    from ..models import load_model
    from ..svf import SVFModel

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=progress)
    svf = SVFModel(
        model, targets=parse_targets(args.targets), parameterization=args.parameterization, progress=progress
    )
    return model, tokenizer, svf


# --------------------------------------------------------------------------- your own data


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data`` and its options: a task made from the user's records (instead of ``--task``)."""
    g = parser.add_argument_group("your own data (instead of --task; see docs/tasks.md)")
    g.add_argument(
        "--data",
        default=None,
        metavar="FILE|HUB_ID",
        help="a .jsonl/.json/.csv file, or a Hub dataset id (owner/name, via datasets.load_dataset)",
    )
    g.add_argument("--prompt-field", default="prompt", help="the field holding the question (default: prompt)")
    g.add_argument("--answer-field", default="answer", help="the field holding the gold answer (default: answer)")
    g.add_argument("--choices-field", default="choices", help="--check choice: the field listing the options")
    g.add_argument(
        "--domain",
        default=None,
        help="the task's name and routing label, written into the expert (default: the file's stem)",
    )
    g.add_argument("--instruction", default=None, help="text put before every prompt")
    g.add_argument(
        "--template", default=None, help="the user turn as a format string over the record's fields, e.g. 'Q: {q}\\nA:'"
    )
    g.add_argument("--no-chat", action="store_true", help="send the prompt as plain text, without the chat template")
    g.add_argument(
        "--check",
        default=None,
        choices=["exact", "normalized", "numeric", "choice"],
        help="how answers are checked (default: normalized); or --reward",
    )
    g.add_argument(
        "--reward",
        default=None,
        metavar="MODULE:FUNCTION",
        help="your reward, TRL's signature reward(completions, **columns) -> list[float]; "
        "pkg.module:function or path/file.py:function",
    )
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of records for validation (default 0.1)")
    g.add_argument("--test-fraction", type=float, default=0.1, help="share of records held out for test (default 0.1)")


def data_task(args: argparse.Namespace, reward_correct: float = 1.0, reward_wrong: float = -1.0) -> Task | None:
    """The generic task ``--data`` describes, read and with its reward tried (None without --data).

    Sets ``args.task`` and ``args.source`` to the task's name and data, so reports and
    train_config.json name the user's task. Every problem is a T2Error (one line, exit code 2),
    raised before a model is loaded or a file written.
    """
    import sys

    from ..errors import T2Error
    from ..tasks import get_task
    from ..tasks.generic import check_domain, prepare_task

    data, task_name = getattr(args, "data", None), getattr(args, "task", None)
    if data is None:
        if not task_name:
            raise T2Error("give --task NAME (t2 data list) or --data FILE with --prompt-field/--answer-field")
        return None
    if task_name and task_name != "generic":
        raise T2Error(f"--task {task_name} and --data are two sources of data; give one (--data makes its own task)")
    task = get_task(
        "generic",
        source=data,
        reward_correct=reward_correct,
        reward_wrong=reward_wrong,
        reward=args.reward,
        check=args.check,
        prompt_field=args.prompt_field,
        answer_field=args.answer_field,
        domain=args.domain,
        instruction=args.instruction,
        template=args.template,
        chat=not args.no_chat,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        **({"choices_field": args.choices_field} if args.check == "choice" else {}),
    )
    prepare_task(task)
    warning = check_domain(task.domain)
    if warning:
        print(f"t2 {args.command}: warning: {warning}", file=sys.stderr)
    args.task, args.source = task.name, task.source.label
    return task
