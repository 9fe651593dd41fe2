"""Base accuracy of the default model on every bundled multiple-choice task, per answer mode.

    python bench/mc_base_table.py --limit 500            # val splits (choose on val, never on test)

For each task: log-likelihood in the cloze channel (per-token, per-character and summed
normalisations, from one run), log-likelihood in the letter channel (the option letter as the
first token after the chat prompt), and optionally greedy generation (``--generate N`` items).
Chance is 1/options. Each run keeps its per-item JSONL under docs/results/mc_base/, so an
interrupted table resumes. Writes docs/results/mc_base_table.json and .md. This is the table the
training tasks were chosen from (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["arc_easy", "arc_challenge", "csqa", "openbookqa", "piqa", "socialiqa", "sciq", "hellaswag", "winogrande"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--split", default="val", help="val (default; sciq has only test) ")
    ap.add_argument("--limit", type=int, default=500, help="first N items of each split")
    ap.add_argument("--letter-limit", type=int, default=300, help="items for the letter channel")
    ap.add_argument("--generate", type=int, default=0, help="also score N items by greedy generation")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "mc_base_table.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformer_squared as t2
    from transformer_squared.evaluation import evaluate, evaluate_loglik
    from transformer_squared.fileio import write_json, write_text
    from transformer_squared.tasks import get_task

    out = Path(args.out)
    item_dir = out.parent / "mc_base"
    item_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = t2.load_model(args.model, progress=False)
    rows = []
    for name in args.tasks:
        task = get_task(name)
        split = args.split if args.split in task.splits() else "test"
        items = task.load(split)
        n_opts = sum(len(task.choices(it)) for it in items[: args.limit]) / min(len(items), args.limit)
        row = {
            "task": name,
            "split": split,
            "domain": task.domain,
            "chance": round(1 / n_opts, 4),
            "train_items": task.split_info("train")["count"] if "train" in task.splits() else 0,
        }
        t0 = time.perf_counter()
        s, _ = evaluate_loglik(
            model,
            tokenizer,
            task,
            items[: args.limit],
            split=split,
            channel="cloze",
            batch_size=args.batch_size,
            items_jsonl=item_dir / f"{name}_{split}_cloze.jsonl",
            desc=f"{name} cloze",
        )
        row.update(
            n_cloze=s.n,
            **{f"cloze_{k}": v for k, v in s.extra["accuracy_by_norm"].items()},
            cloze_seconds=round(time.perf_counter() - t0, 1),
        )
        t0 = time.perf_counter()
        s, _ = evaluate_loglik(
            model,
            tokenizer,
            task,
            items[: args.letter_limit],
            split=split,
            channel="letter",
            batch_size=args.batch_size,
            items_jsonl=item_dir / f"{name}_{split}_letter.jsonl",
            desc=f"{name} letter",
        )
        row.update(n_letter=s.n, letter=s.accuracy, letter_seconds=round(time.perf_counter() - t0, 1))
        if args.generate:
            s, _ = evaluate(
                model,
                tokenizer,
                task,
                items[: args.generate],
                split=split,
                batch_size=args.batch_size,
                items_jsonl=item_dir / f"{name}_{split}_generate.jsonl",
                desc=f"{name} generate",
            )
            row.update(n_generate=s.n, generate=s.accuracy)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json(
            out,
            {
                "model": args.model,
                "limit": args.limit,
                "letter_limit": args.letter_limit,
                "command": "python bench/mc_base_table.py "
                + " ".join(
                    f"--{k.replace('_', '-')} {v}"
                    for k, v in (("limit", args.limit), ("letter_limit", args.letter_limit))
                ),
                "rows": rows,
            },
        )
    write_text(out.with_suffix(".md"), render(rows))


def render(rows: list[dict]) -> str:
    gen = any("generate" in r for r in rows)
    head = ["task (split, items)", "domain", "chance", "cloze/token", "cloze/char", "cloze/sum", "letter"]
    head += ["generate"] if gen else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            f"{r['task']} ({r['split']}, {r['n_cloze']})",
            r["domain"],
            f"{r['chance']:.0%}",
            f"{r['cloze_token']:.1%}",
            f"{r['cloze_char']:.1%}",
            f"{r['cloze_sum']:.1%}",
            f"{r['letter']:.1%} ({r['n_letter']})",
        ]
        if gen:
            cells.append(f"{r['generate']:.1%} ({r['n_generate']})" if "generate" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
