"""``t2 train-router``: fit the early-layer probe router (a cheap first pass) on requests of the training tasks."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..errors import T2Error
from .common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-router",
        help="fit the cheap first pass: a linear probe on an early layer",
        description="Fits a logistic-regression probe on the mean hidden state of an early decoder "
        "block of the base model, over the requests of the classify task's train split "
        "(labelled by the task each request comes from); picks the earliest candidate "
        "layer within --tolerance of the best val accuracy; reports routing accuracy on "
        "the held-out test requests. Use it with t2 eval --adapt probe --router DIR.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where to save the router")
    p.add_argument(
        "--labels",
        default=None,
        help="label=task pairs, comma-separated (default: the classify task's: math=gsm8k, code=mbpp, "
        "reasoning=arc_easy, commonsense=csqa)",
    )
    p.add_argument("--layers", default="2,4,6,8,12", help="candidate decoder blocks (1-based), comma-separated")
    p.add_argument("--max-tokens", type=int, default=64, help="the first N tokens of each request are read")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="keep the earliest layer within this val accuracy of the best (default 0.005)",
    )
    p.add_argument("--source", default="offline", help="offline (bundled data) or hub")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p, targets=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..models import load_model, model_name
    from ..probe import train_probe_router
    from ..tasks import get_task

    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()]
    except ValueError:
        raise T2Error(f"--layers must be comma-separated integers, got {args.layers!r}") from None
    if not layers or args.max_tokens < 1:
        raise T2Error("--layers needs at least one layer and --max-tokens must be at least 1")
    kwargs: dict[str, Any] = {}
    if args.labels:
        pairs = [x.split("=", 1) for x in args.labels.split(",") if x.strip()]
        if any(len(x) != 2 for x in pairs):
            raise T2Error(f"--labels takes label=task pairs, got {args.labels!r}")
        kwargs = {"labels": tuple(lab for lab, _ in pairs), "sources": dict(pairs)}
    task = get_task("classify", source=args.source, **kwargs)
    data = {split: [(it.question, it.answer) for it in task.load(split)] for split in ("train", "val", "test")}
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=not args.no_progress)
    t0 = time.perf_counter()
    router, val_acc = train_probe_router(
        model,
        tokenizer,
        data["train"],
        data["val"],
        layers=layers,
        max_tokens=args.max_tokens,
        tolerance=args.tolerance,
        progress=not args.no_progress,
    )
    pred = router.predict(model, tokenizer, [t for t, _ in data["test"]])
    test_acc = sum(p == lab for p, (_, lab) in zip(pred, data["test"], strict=True)) / len(pred)
    router.meta.update(
        test_accuracy=test_acc,
        test_n=len(pred),
        model=model_name(model, args.model),
        train_provenance=task.split_info("train")["provenance"],
        seconds=round(time.perf_counter() - t0, 1),
    )
    router.save(args.out)
    confusion: dict[str, dict[str, int]] = {}
    for p, (_, lab) in zip(pred, data["test"], strict=True):
        confusion.setdefault(lab, {}).setdefault(p, 0)
        confusion[lab][p] += 1
    write_json(f"{args.out}/test_confusion.json", confusion)
    for layer, acc in val_acc.items():
        print(f"layer {layer:2d}: val routing accuracy {acc:.1%}" + ("  <- kept" if layer == router.layer else ""))
    print(f"test routing accuracy {test_acc:.1%} ({len(pred)} held-out requests); router saved to {args.out}")
    return 0
