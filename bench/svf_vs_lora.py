"""SVF against LoRA under one protocol: the same objective, data order, items, selection and seeds.

    python bench/svf_vs_lora.py --task arc_easy                 # every cell, in order, resumable
    python bench/svf_vs_lora.py --task arc_easy --only svf-exact   # one method/objective
    python bench/svf_vs_lora.py --task arc_easy --only svf-reinforce   # the paper's sampled REINFORCE row
    python bench/svf_vs_lora.py --smoke                        # the whole pipeline on tiny settings

Each cell writes its own file, so two processes may run different ``--only`` cells at once (one
per core); the table is assembled from whatever cells exist.

The protocol is fixed here, before any run (``PROTOCOL``), and is the same for every method:

* methods: SVF on the MLP (51,840 numbers on the default model); LoRA r=16 on q_proj/v_proj (the
  paper's baseline, 921,600); LoRA r=1 on q_proj/v_proj (57,600: about SVF's size);
* objectives, both in the cloze answer channel: ``exact`` (the exact policy gradient of the expected
  reward over the options) and ``sft`` (the gold option's log-likelihood);
* the budget: 40 steps x 16 questions (640 questions, 28% of an epoch of ARC-Easy train), val at
  steps 20 and 40 (the base model's val accuracy is the same for every run, so no step-0 eval);
* each method's learning rate is chosen on the val split from three values (seed 0; the best
  val accuracy, ties to the smaller rate); seed 1 then reruns the chosen rate;
* every run keeps its best checkpoint by val accuracy (all val items, log-likelihood, cloze);
  the test split is only scored for the chosen runs (and the base model), in full, with
  ``t2 eval --mode loglik``;
* val and test are scored under bf16 autocast, the precision the runs train in (amended on
  2026-11-30, before any test item was scored, when fp32 val took 18 of a run's 27 minutes: bf16
  scores 2.3x faster and picked the same option on 64 of 64 ARC-Easy val items; the two runs begun
  with fp32 val were restarted). On the whole ARC-Easy test the base model scores 48.2% under bf16
  and 48.3% in fp32 (won 7, lost 8, McNemar p = 1: ``t2 compare`` of the two base reports);
* each chosen run is compared with the base model and SVF with each LoRA by ``t2 compare``
  (paired, exact McNemar) on the same test items.

Every cell is the project's own ``t2 train`` / ``t2 eval`` / ``t2 compare`` in a child process;
finished runs and reports are reused, so the table can be built over several sessions. Writes
docs/results/svf_vs_lora.json and .md (bench/report.py shows them), per-cell records in
docs/results/svf_vs_lora/<task>/cells/ and per-item test files beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

PROTOCOL = {
    "steps": 40,
    "batch_size": 16,
    "eval_every": 20,
    "channel": "cloze",
    "norm": "token",
    "common": "--clip 0 --kl-coef 0 --autocast bf16 --val-limit 0 --checkpoint-every 10 --no-eval-at-start",
    "test_limit": None,
    "eval": "--autocast bf16",
}
# --smoke: every stage on tiny settings, into a scratch folder (checks the pipeline, measures nothing)
SMOKE = {
    "steps": 2,
    "batch_size": 2,
    "eval_every": 2,
    "channel": "cloze",
    "norm": "token",
    "common": "--clip 0 --kl-coef 0 --autocast bf16 --val-limit 8 --checkpoint-every 1 --no-eval-at-start",
    "test_limit": 8,
    "eval": "--autocast bf16",
}
METHODS = {
    "svf": {"args": ["--method", "svf"], "lrs": ["1e-3", "3e-3", "1e-2"]},
    "lora16": {
        "args": ["--method", "lora", "--lora-rank", "16", "--lora-alpha", "32", "--lora-targets", "q_proj,v_proj"],
        "lrs": ["1e-4", "3e-4", "1e-3"],
    },
    "lora1": {
        "args": ["--method", "lora", "--lora-rank", "1", "--lora-alpha", "2", "--lora-targets", "q_proj,v_proj"],
        "lrs": ["3e-4", "1e-3", "3e-3"],
    },
}
OBJECTIVES = ["exact", "sft"]
SEEDS = [0, 1]
# The paper's own objective as a row of its own: sampled REINFORCE on generated answers (the answer
# mode t2 generate and t2 serve use), sized to 10,240 rollouts (80 steps x 16 prompts x K = 8).
# One run at the paper's lr 2e-3 and clip 1e-3 (no lr grid: one run takes about 3 CPU-hours);
# a group-mean baseline over the K samples; no KL (lambda = 0 is in the paper's grid); val and test
# are greedy generation with the same 8 new tokens, test against the base model scored the same way.
REINFORCE = {
    "cell": "svf-reinforce",
    "steps": 80,
    "batch_size": 16,
    "samples_per_prompt": 8,
    "eval_every": 20,
    "lr": "2e-3",
    "seed": 0,
    "max_new_tokens": 8,
    "common": "--objective rl --baseline mean --temperature 1.0 --clip 1e-3 --kl-coef 0 --autocast bf16 "
    "--val-limit 0 --checkpoint-every 5 --no-eval-at-start",
}
SMOKE_REINFORCE = {
    **REINFORCE,
    "steps": 2,
    "batch_size": 2,
    "samples_per_prompt": 2,
    "eval_every": 2,
    "common": REINFORCE["common"].replace("--val-limit 0 --checkpoint-every 5", "--val-limit 8 --checkpoint-every 1"),
}


def t2(*args: str, log: Path) -> None:
    from common import run_t2

    run_t2(*args, log=log, cwd=ROOT)


def best_val(run: Path, steps: int) -> tuple[float, int] | None:
    """(best val accuracy, its step) of a finished run, from its metrics."""
    metrics = run / "metrics.jsonl"
    if not (run / "train_config.json").is_file() or not metrics.is_file():
        return None
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if not rows or max(r["step"] for r in rows) < steps:
        return None
    val = [(r["val_accuracy"], -r["step"]) for r in rows if "val_accuracy" in r]
    acc, neg_step = max(val)
    return acc, -neg_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--runs", default="runs/svf_vs_lora", help="training runs (not committed)")
    ap.add_argument("--only", nargs="*", default=None, help="cells METHOD-OBJECTIVE to run (default: all)")
    ap.add_argument("--results", default=str(RESULTS), help="where the table and its reports go")
    ap.add_argument("--smoke", action="store_true", help="tiny settings into a scratch folder (a pipeline check)")
    args = ap.parse_args()
    p = SMOKE if args.smoke else PROTOCOL
    if args.smoke:
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="svf_vs_lora_smoke_"))
        args.runs, args.results = str(scratch / "runs"), str(scratch / "results")
        print(f"smoke run in {scratch}")
    runs = Path(args.runs) if Path(args.runs).is_absolute() else ROOT / args.runs
    runs.mkdir(parents=True, exist_ok=True)
    results = Path(args.results)
    reports = results / "svf_vs_lora" / args.task
    (reports / "cells").mkdir(parents=True, exist_ok=True)
    log = runs / f"log-{'-'.join(args.only) if args.only else 'all'}.txt"
    limit = ["--limit", str(p["test_limit"])] if p["test_limit"] else []

    def evaluate(out: Path, *weights: str) -> None:
        if not out.is_file():
            t2(
                "eval",
                "--task",
                args.task,
                "--mode",
                "loglik",
                "--channel",
                p["channel"],
                "--norm",
                p["norm"],
                *weights,
                *limit,
                *p["eval"].split(),
                "--no-progress",
                "--out",
                str(out),
                log=log,
            )

    base = reports / "base.json"  # scored when the first grid cell needs it
    for objective in OBJECTIVES:
        for method, spec in METHODS.items():
            cell = f"{method}-{objective}"
            if args.only and cell not in args.only:
                continue
            cell_file = reports / "cells" / f"{cell}.json"
            entry = json.loads(cell_file.read_text()) if cell_file.is_file() else {"lr_search": {}, "seeds": {}}

            def train(lr: str, seed: int, cell: str = cell, objective: str = objective, spec: dict = spec) -> Path:
                run = runs / f"{args.task}-{cell}-lr{lr}-s{seed}"
                options = ["--task", args.task, "--objective", objective, "--channel", p["channel"]]
                options += ["--norm", p["norm"], "--batch-size", str(p["batch_size"])]
                options += ["--eval-every", str(p["eval_every"]), "--lr", lr, "--seed", str(seed)]
                train_run(run, p["steps"], [*options, *p["common"].split(), *spec["args"]], log)
                return run

            for lr in spec["lrs"]:
                acc, step = best_val(train(lr, 0), p["steps"])
                entry["lr_search"][lr] = {"val_accuracy": acc, "best_step": step}
                write_cell(cell_file, entry, results, p)
            chosen = max(spec["lrs"], key=lambda lr: (entry["lr_search"][lr]["val_accuracy"], -float(lr)))
            entry["lr"] = chosen
            for seed in SEEDS:
                run = train(chosen, seed)
                report = reports / f"{cell}-s{seed}.json"
                evaluate(base)
                evaluate(report, "--expert" if method == "svf" else "--lora", str(run))
                cmp = reports / f"{cell}-s{seed}-vs-base.json"
                t2("compare", str(base), str(report), "--json", str(cmp), log=log)
                c = json.loads(cmp.read_text())
                entry["seeds"][str(seed)] = seed_record(c, run, p["steps"], report, results, args.smoke)
                write_cell(cell_file, entry, results, p)
    rf = SMOKE_REINFORCE if args.smoke else REINFORCE
    if not args.only or rf["cell"] in args.only:
        reinforce_row(args.task, rf, runs, reports, results, p, limit, log, smoke=args.smoke)
    # SVF against each LoRA, same objective and seed, paired (whatever pairs exist so far)
    for objective in OBJECTIVES:
        for lora in ("lora16", "lora1"):
            for seed in SEEDS:
                a = reports / f"{lora}-{objective}-s{seed}.json"
                b = reports / f"svf-{objective}-s{seed}.json"
                cmp = reports / f"svf-vs-{lora}-{objective}-s{seed}.json"
                if a.is_file() and b.is_file() and not cmp.is_file():
                    t2("compare", str(a), str(b), "--json", str(cmp), log=log)
    assemble(args.task, results, p, rf)


def train_run(run: Path, steps: int, options: list[str], log: Path) -> None:
    """``t2 train`` into ``run`` for ``steps`` steps, unless it has finished: resumed from its
    checkpoint when it has one, started afresh otherwise; its wall time is kept beside it."""
    if best_val(run, steps) is not None:
        return
    resume = ["--resume"] if (run / "checkpoint").exists() else ["--overwrite"]
    t = time.perf_counter()
    t2("train", "--out", str(run), "--steps", str(steps), *options, "--no-progress", *resume, log=log)
    (run / "bench_wall_seconds.txt").write_text(f"{time.perf_counter() - t:.0f}\n")


def reinforce_row(
    task: str, rf: dict, runs: Path, reports: Path, results: Path, p: dict, limit: list[str], log: Path, smoke: bool
) -> None:
    """The sampled-REINFORCE row: one SVF run on generated answers, tested against base in generation."""
    run = runs / f"{task}-{rf['cell']}-lr{rf['lr']}-s{rf['seed']}"
    cell_file = reports / "cells" / f"{rf['cell']}.json"
    options = ["--task", task, "--method", "svf", "--batch-size", str(rf["batch_size"])]
    options += ["--samples-per-prompt", str(rf["samples_per_prompt"]), "--eval-every", str(rf["eval_every"])]
    options += ["--lr", rf["lr"], "--seed", str(rf["seed"]), "--max-new-tokens", str(rf["max_new_tokens"])]
    train_run(run, rf["steps"], [*options, *rf["common"].split()], log)
    gen = ["--task", task, "--max-new-tokens", str(rf["max_new_tokens"]), *limit, *p["eval"].split(), "--no-progress"]
    base = reports / f"base-generate-{rf['max_new_tokens']}tok.json"  # the settings are in the name
    report = reports / f"{rf['cell']}-s{rf['seed']}.json"
    for out, weights in ((base, []), (report, ["--expert", str(run)])):
        if not out.is_file():
            t2("eval", *gen, *weights, "--out", str(out), log=log)
    cmp = reports / f"{rf['cell']}-s{rf['seed']}-vs-base.json"
    t2("compare", str(base), str(report), "--json", str(cmp), log=log)
    c = json.loads(cmp.read_text())
    entry = {
        "lr": rf["lr"],
        "lr_search": {},
        "protocol": {k: v for k, v in rf.items() if k != "cell"},
        "rollouts": rf["steps"] * rf["batch_size"] * rf["samples_per_prompt"],
        "answer_mode": "generate",
        "seeds": {str(rf["seed"]): seed_record(c, run, rf["steps"], report, results, smoke)},
    }
    write_cell(cell_file, entry, results, p, rf)


def seed_record(c: dict, run: Path, steps: int, report: Path, results: Path, smoke: bool) -> dict:
    """One chosen run's row: its val, its test against base (from the t2 compare JSON), its size."""
    return {
        "val": best_val(run, steps)[0],
        "test": c["accuracy_b"],
        "base": c["accuracy_a"],
        "difference": c["difference"],
        "ci95": c.get("ci95"),
        "detectable": c.get("detectable"),
        "p_value": c["p_value"],
        "won": c["won"],
        "lost": c["lost"],
        "n": c["n"],
        "trainable_params": json.loads((run / "train_config.json").read_text())["trainable_params"],
        "report": str(report if smoke else report.relative_to(results.parent)),
    }


def write_cell(cell_file: Path, entry: dict, results: Path, protocol: dict, reinforce: dict = REINFORCE) -> None:
    from transformer_squared.fileio import write_json

    write_json(cell_file, entry)
    assemble(cell_file.parents[1].name, results, protocol, reinforce)


def assemble(task: str, results: Path, protocol: dict, reinforce: dict = REINFORCE) -> None:
    """The table from every cell file and every SVF-vs-LoRA comparison written so far."""
    from transformer_squared.fileio import write_json, write_text

    reports = results / "svf_vs_lora" / task
    cells = {}
    for objective in OBJECTIVES:
        for method in METHODS:
            f = reports / "cells" / f"{method}-{objective}.json"
            if f.is_file():
                cells[f"{method}-{objective}"] = json.loads(f.read_text())
    f = reports / "cells" / f"{REINFORCE['cell']}.json"
    if f.is_file():
        cells[REINFORCE["cell"]] = json.loads(f.read_text())
    pairs = {}
    for objective in OBJECTIVES:
        for lora in ("lora16", "lora1"):
            for seed in SEEDS:
                f = reports / f"svf-vs-{lora}-{objective}-s{seed}.json"
                if f.is_file():
                    pairs[f"{objective}/{lora}/s{seed}"] = json.loads(f.read_text())
    table = {
        "task": task,
        "protocol": protocol,
        "reinforce": reinforce,
        "methods": METHODS,
        "cells": cells,
        "svf_vs_lora": pairs,
    }
    out = results / "svf_vs_lora.json"
    write_json(out, table)
    write_text(out.with_suffix(".md"), render(table))


def ci(interval: list[float] | None) -> str:
    return f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]" if interval else ""


def render(table: dict) -> str:
    lines = [
        "| method | objective | trainable | lr (chosen on val) | seed | val | test | vs base (points) [95% CI] "
        "| won / lost | p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, e in table["cells"].items():
        method, objective = cell.rsplit("-", 1)
        if e.get("answer_mode") == "generate":
            objective += f" ({e['rollouts']:,} rollouts; generated answers, base generated too)"
        for seed, r in sorted(e.get("seeds", {}).items()):
            lines.append(
                f"| {method} | {objective} | {r['trainable_params']:,} | {e.get('lr', '?')} | {seed} | "
                f"{r['val']:.1%} | {r['test']:.1%} | {100 * r['difference']:+.1f} {ci(r.get('ci95'))} | "
                f"{r['won']} / {r['lost']} | {r['p_value']:.2g} |"
            )
    searched = [
        f"{cell}: " + ", ".join(f"{lr} {100 * r['val_accuracy']:.1f}%" for lr, r in e["lr_search"].items())
        for cell, e in table["cells"].items()
        if e.get("lr_search")
    ]
    if searched:
        lines.append("\nBest val accuracy per learning rate (seed 0): " + "; ".join(searched))
    for key, c in table.get("svf_vs_lora", {}).items():
        lines.append(
            f"\nSVF vs {key}: {100 * c['difference']:+.1f} points {ci(c.get('ci95'))} (SVF won {c['won']}, "
            f"lost {c['lost']}, exact McNemar p = {c['p_value']:.2g}; the test sees about "
            f"±{100 * c['detectable']:.1f} points)"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
