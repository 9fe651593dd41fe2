"""The shipped experts against the base model, paired on the same held-out items, in every answer mode.

    python bench/expert_table.py --expert experts/reasoning --task arc_easy --unseen arc_challenge
    python bench/expert_table.py --expert experts/commonsense --task csqa

For each (task, answer mode) the base model and the expert are scored by ``t2 eval`` on the whole
test split (``--limit`` to cap it) and compared by ``t2 compare`` (paired difference with a 95% CI,
exact McNemar p, the smallest difference the test could see). Modes: ``cloze`` and ``letter``
(``--mode loglik`` in each channel) and ``generate`` (greedy answer, the letter read by the checker;
``--generate-limit`` caps its items, being the slowest). Every report, per-item JSONL and
comparison is kept under docs/results/experts/<expert>/; an interrupted run resumes where it
stopped. The table is docs/results/expert_table.json (rows are added or replaced per expert, task
and mode) and .md; bench/report.py puts it in docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MODES = {
    "cloze": ["--mode", "loglik", "--channel", "cloze"],
    "letter": ["--mode", "loglik", "--channel", "letter"],
    "generate": [],
}


def t2(*args: str) -> None:
    print("$ t2 " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "transformer_squared.cli", *args], check=True, cwd=ROOT)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expert", required=True, help="the expert folder")
    ap.add_argument("--task", required=True, help="the task it was trained on (its held-out test split)")
    ap.add_argument("--unseen", nargs="*", default=[], help="tasks it was never trained on, scored the same way")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument(
        "--unseen-modes",
        nargs="+",
        default=["cloze"],
        choices=list(MODES),
        help="answer modes for the --unseen tasks (default: cloze)",
    )
    ap.add_argument("--limit", type=int, default=None, help="first N test items (default: all)")
    ap.add_argument("--generate-limit", type=int, default=None, help="first N test items in generate mode")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(RESULTS / "expert_table.json"))
    args = ap.parse_args()

    expert = Path(args.expert)
    name = json.loads((expert / "expert.json").read_text()).get("name", expert.name)
    folder = RESULTS / "experts" / name
    folder.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    for task in [args.task, *args.unseen]:
        for mode in args.modes if task == args.task else args.unseen_modes:
            limit = args.generate_limit if mode == "generate" and args.generate_limit else args.limit
            common = [
                "eval",
                "--task",
                task,
                "--split",
                "test",
                *MODES[mode],
                "--batch-size",
                str(args.batch_size),
                "--no-progress",
            ] + (["--limit", str(limit)] if limit else [])
            reports = {}
            seconds = {}
            for who in ("base", "expert"):
                report = folder / f"{task}-{who}-{mode}.json"
                t = time.perf_counter()
                if not report.is_file():
                    t2(*common, *(["--expert", rel(expert)] if who == "expert" else []), "--out", rel(report))
                seconds[who] = round(time.perf_counter() - t, 1)
                reports[who] = report
            cmp_path = folder / f"{task}-{mode}-compare.json"
            t2("compare", rel(reports["base"]), rel(reports["expert"]), "--json", rel(cmp_path))
            cmp = json.loads(cmp_path.read_text())
            row = {
                "expert": name,
                "expert_dir": rel(expert),
                "task": task,
                "trained_on": task == args.task,
                "mode": mode,
                "n": cmp["n"],
                "base": cmp["accuracy_a"],
                "with_expert": cmp["accuracy_b"],
                "difference": cmp["difference"],
                "ci95": cmp["ci95"],
                "won": cmp["won"],
                "lost": cmp["lost"],
                "p_value": cmp["p_value"],
                "detectable": cmp["detectable"],
                "commands": [
                    f"t2 {' '.join(common)} --out {rel(reports['base'])}",
                    f"t2 {' '.join(common)} --expert {rel(expert)} --out {rel(reports['expert'])}",
                    f"t2 compare {rel(reports['base'])} {rel(reports['expert'])}",
                ],
            }
            table = json.loads(out.read_text()) if out.is_file() else {"rows": []}  # another run may have added rows
            table["rows"] = [r for r in table["rows"] if (r["expert"], r["task"], r["mode"]) != (name, task, mode)] + [
                row
            ]
            write(out, table)
            print(json.dumps({k: row[k] for k in ("task", "mode", "n", "base", "with_expert", "p_value")}), flush=True)


def render(rows: list[dict]) -> str:
    lines = [
        "| expert | task (test items) | answer mode | base | with expert | difference [95% CI] | won / lost "
        "| McNemar p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        seen = "" if r["trained_on"] else " (never trained on)"
        lines.append(
            f"| {r['expert']} | {r['task']}{seen} ({r['n']}) | {r['mode']} | {r['base']:.1%} | "
            f"{r['with_expert']:.1%} | {r['difference'] * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}] | "
            f"{r['won']} / {r['lost']} | {r['p_value']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def write(out: Path, table: dict) -> None:
    from transformer_squared.fileio import write_json, write_text

    write_json(out, table)
    write_text(out.with_suffix(".md"), render(table["rows"]))


if __name__ == "__main__":
    main()
