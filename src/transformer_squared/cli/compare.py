"""``t2 compare``: two evaluations over the same items, compared item by item (exact McNemar)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="paired comparison of two t2 eval reports over the same items",
        description="Reads two `t2 eval --out` reports and their per-item files, and prints each "
        "accuracy, the paired difference (B − A) with a 95% CI, the items each one won, "
        "the exact McNemar p-value and the smallest difference the test could see. "
        "Reports over different items, tasks, splits or answer modes are refused.",
    )
    p.add_argument("a", metavar="A.json", help="the reference run (e.g. the base model)")
    p.add_argument("b", metavar="B.json", help="the run compared with it (e.g. an expert)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..stats import compare_reports

    cmp, rep_a, rep_b = compare_reports(args.a, args.b)
    extra = rep_a.get("extra") or {}
    mode = extra.get("mode", "generate")
    where = f"{rep_a.get('task')}/{rep_a.get('split')}, {mode}" + (
        f" ({extra['channel']}, {extra['norm']})" if mode == "loglik" else ""
    )
    print(f"{where}: A = {args.a}, B = {args.b}")
    precision = [rep.get("autocast") or "none" for rep in (rep_a, rep_b)]
    if precision[0] != precision[1]:
        print(f"note: A was scored with --autocast {precision[0]}, B with --autocast {precision[1]}")
    for line in cmp.lines():
        print(line)
    if args.json:
        write_json(
            args.json,
            {
                "a": args.a,
                "b": args.b,
                "task": rep_a.get("task"),
                "split": rep_a.get("split"),
                "mode": mode,
                "autocast": precision,
                **cmp.to_dict(),
            },
        )
    return 0
