"""``t2 eval``: accuracy of the base model or an expert on a task split, with a resumable report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import T2Error
from .common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate the base model or an expert on a task (greedy)",
                       description="Greedy, batched evaluation with a per-item JSONL next to the report. "
                                   "Re-running with the same --out resumes from the items already written.")
    p.add_argument("--task", required=True, help="gsm8k, mbpp, humaneval, arc_easy, arc_challenge, math, classify")
    p.add_argument("--split", default="test", help="train, val or test (default: test, the held-out part)")
    p.add_argument("--source", default="offline", help="offline (bundled data), hub, or a JSONL file")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N items of the split")
    p.add_argument("--expert", default=None, help="an expert folder to apply (default: the base model)")
    p.add_argument("--force", action="store_true", help="apply an expert made on other weights (same shapes)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    p.add_argument("--out", default=None, help="report JSON path (items go to <out>.items.jsonl)")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate
    from ..experts import Expert
    from ..fileio import write_json
    from ..tasks import get_task

    if args.limit is not None and args.limit < 1:
        raise T2Error(f"--limit must be at least 1, got {args.limit}")
    task = get_task(args.task, source=args.source)
    items = task.load(args.split)
    if args.limit:
        items = items[: args.limit]
    expert = Expert.load(args.expert) if args.expert else None
    out = Path(args.out) if args.out else None
    items_path = out.with_name(out.name + ".items.jsonl") if out else None
    if items_path and items_path.exists():
        meta_path = out.with_name(out.name + ".run.json")
        if meta_path.exists():
            prev = json.loads(meta_path.read_text())
            now = {"task": task.name, "split": args.split, "expert": args.expert, "model": args.model}
            if {k: prev.get(k) for k in now} != now:
                raise T2Error(f"{items_path} holds items of another run ({prev}); use another --out or delete it")
    t0 = time.perf_counter()
    from .common import load_svf

    model, tokenizer, svf = load_svf(args, progress=not args.no_progress) if expert else (*_load_plain(args), None)
    if expert:
        svf.apply(expert, strict=not args.force)
    if out:
        write_json(out.with_name(out.name + ".run.json"),
                   {"task": task.name, "split": args.split, "expert": args.expert, "model": args.model})
    load_s = time.perf_counter() - t0
    summary, rows = evaluate(model, tokenizer, task, items, split=args.split, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, items_jsonl=items_path,
                             progress=not args.no_progress)
    answered = sum(r["extracted"] is not None for r in rows)
    report = summary.to_dict()
    report.update(model=getattr(model, "t2_model_name", args.model), expert=expert.name if expert else None,
                  source=args.source, limit=args.limit, answered=answered, load_seconds=round(load_s, 2),
                  command="t2 " + " ".join(_argv(args)))
    print(summary.line())
    print(f"answered (an answer could be extracted): {answered}/{len(rows)}")
    if summary.provenance:
        print(f"data: {summary.provenance}")
    if out:
        write_json(out, report)
        print(f"report: {out}  items: {items_path}")
    return 0


def _load_plain(args: argparse.Namespace):
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, progress=not args.no_progress)


def _argv(args: argparse.Namespace) -> list[str]:
    parts = ["eval", "--task", args.task, "--split", args.split]
    if args.limit:
        parts += ["--limit", str(args.limit)]
    if args.expert:
        parts += ["--expert", args.expert]
    if args.model != "default":
        parts += ["--model", args.model]
    return parts
