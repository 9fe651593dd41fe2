"""SVF against LoRA under one protocol: the same objective, data order, items, selection and seeds.

    python bench/svf_vs_lora.py --task arc_easy                 # every cell, in order, resumable
    python bench/svf_vs_lora.py --task arc_easy --only svf-exact   # one method/objective

The protocol is fixed here, before any run (``PROTOCOL``), and is the same for every method:

* methods: SVF on the MLP (51,840 numbers on the default model); LoRA r=16 on q_proj/v_proj (the
  paper's baseline, 921,600); LoRA r=1 on q_proj/v_proj (57,600: about SVF's size);
* objectives, both in the cloze answer channel: ``exact`` (the exact policy gradient of the expected
  reward over the options) and ``sft`` (the gold option's log-likelihood);
* each method's learning rate is chosen on the val split from three values (seed 0; the best
  val accuracy, ties to the smaller rate); seed 1 then reruns the chosen rate;
* every run keeps its best checkpoint by val accuracy (all val items, log-likelihood, cloze);
  the test split is only scored for the chosen runs, in full, with ``t2 eval --mode loglik``;
* each chosen run is compared with the base model and SVF with each LoRA by ``t2 compare``
  (paired, exact McNemar) on the same test items.

Every cell is the project's own ``t2 train`` / ``t2 eval`` / ``t2 compare`` in a child process;
finished runs and reports are reused, so the table can be built over several sessions. Writes
docs/results/svf_vs_lora.json and .md (bench/report.py shows them).
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

PROTOCOL = {
    "steps": 80, "batch_size": 16, "eval_every": 20, "channel": "cloze", "norm": "token",
    "common": "--clip 0 --kl-coef 0 --autocast bf16 --val-limit 0 --checkpoint-every 10",
}
METHODS = {
    "svf": {"args": ["--method", "svf"], "lrs": ["1e-3", "3e-3", "1e-2"]},
    "lora16": {"args": ["--method", "lora", "--lora-rank", "16", "--lora-alpha", "32",
                        "--lora-targets", "q_proj,v_proj"], "lrs": ["1e-4", "3e-4", "1e-3"]},
    "lora1": {"args": ["--method", "lora", "--lora-rank", "1", "--lora-alpha", "2",
                       "--lora-targets", "q_proj,v_proj"], "lrs": ["3e-4", "1e-3", "3e-3"]},
}
OBJECTIVES = ["exact", "sft"]
SEEDS = [0, 1]


def t2(*args: str, log: Path) -> None:
    with open(log, "a") as fh:
        fh.write("$ t2 " + " ".join(args) + "\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "transformer_squared.cli", *args], check=True, cwd=ROOT,
                       stdout=fh, stderr=subprocess.STDOUT)


def best_val(run: Path) -> tuple[float, int] | None:
    """(best val accuracy, its step) of a finished run, from its metrics."""
    metrics = run / "metrics.jsonl"
    if not (run / "train_config.json").is_file() or not metrics.is_file():
        return None
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if not rows or max(r["step"] for r in rows) < PROTOCOL["steps"]:
        return None
    val = [(r["val_accuracy"], -r["step"]) for r in rows if "val_accuracy" in r]
    acc, neg_step = max(val)
    return acc, -neg_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--runs", default="runs/svf_vs_lora", help="training runs (not committed)")
    ap.add_argument("--only", nargs="*", default=None, help="cells METHOD-OBJECTIVE to run (default: all)")
    ap.add_argument("--out", default=str(RESULTS / "svf_vs_lora.json"))
    args = ap.parse_args()
    runs = Path(args.runs) if Path(args.runs).is_absolute() else ROOT / args.runs
    runs.mkdir(parents=True, exist_ok=True)
    reports = RESULTS / "svf_vs_lora" / args.task
    reports.mkdir(parents=True, exist_ok=True)
    log = runs / "log.txt"
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {"protocol": PROTOCOL, "methods": METHODS, "cells": {}}
    p = PROTOCOL

    base = reports / "base.json"
    if not base.is_file():
        t2("eval", "--task", args.task, "--mode", "loglik", "--channel", p["channel"], "--norm", p["norm"],
           "--no-progress", "--out", str(base), log=log)
    for objective in OBJECTIVES:
        for method, spec in METHODS.items():
            cell = f"{method}-{objective}"
            if args.only and cell not in args.only:
                continue
            entry = table["cells"].setdefault(cell, {"lr_search": {}, "seeds": {}})

            def train(lr: str, seed: int, cell: str = cell, objective: str = objective, spec: dict = spec) -> Path:
                run = runs / f"{args.task}-{cell}-lr{lr}-s{seed}"
                if best_val(run) is None:
                    resume = ["--resume"] if (run / "checkpoint").exists() else ["--overwrite"]
                    t = time.perf_counter()
                    t2("train", "--task", args.task, "--out", str(run), "--objective", objective, "--channel",
                       p["channel"], "--norm", p["norm"], "--steps", str(p["steps"]), "--batch-size",
                       str(p["batch_size"]), "--eval-every", str(p["eval_every"]), "--lr", lr, "--seed", str(seed),
                       *p["common"].split(), *spec["args"], "--no-progress", *resume, log=log)
                    (run / "bench_wall_seconds.txt").write_text(f"{time.perf_counter() - t:.0f}\n")
                return run

            for lr in spec["lrs"]:
                acc, step = best_val(train(lr, 0))
                entry["lr_search"][lr] = {"val_accuracy": acc, "best_step": step}
                write(out, table)
            chosen = max(spec["lrs"], key=lambda lr: (entry["lr_search"][lr]["val_accuracy"], -float(lr)))
            entry["lr"] = chosen
            for seed in SEEDS:
                run = train(chosen, seed)
                report = reports / f"{cell}-s{seed}.json"
                if not report.is_file():
                    weights = ["--expert", str(run)] if method == "svf" else ["--lora", str(run)]
                    t2("eval", "--task", args.task, "--mode", "loglik", "--channel", p["channel"], "--norm", p["norm"],
                       *weights, "--no-progress", "--out", str(report), log=log)
                cmp = reports / f"{cell}-s{seed}-vs-base.json"
                t2("compare", str(base), str(report), "--json", str(cmp), log=log)
                c = json.loads(cmp.read_text())
                params = json.loads((run / "train_config.json").read_text())["trainable_params"]
                entry["seeds"][str(seed)] = {"val": best_val(run)[0], "test": c["accuracy_b"], "base": c["accuracy_a"],
                                             "difference": c["difference"], "p_value": c["p_value"],
                                             "won": c["won"], "lost": c["lost"], "n": c["n"],
                                             "trainable_params": params, "report": str(report.relative_to(ROOT))}
                write(out, table)
    # SVF against each LoRA, same objective and seed, paired
    table["svf_vs_lora"] = {}
    for objective in OBJECTIVES:
        for lora in ("lora16", "lora1"):
            for seed in SEEDS:
                a = reports / f"{lora}-{objective}-s{seed}.json"
                b = reports / f"svf-{objective}-s{seed}.json"
                if a.is_file() and b.is_file():
                    cmp = reports / f"svf-vs-{lora}-{objective}-s{seed}.json"
                    t2("compare", str(a), str(b), "--json", str(cmp), log=log)
                    table["svf_vs_lora"][f"{objective}/{lora}/s{seed}"] = json.loads(cmp.read_text())
    write(out, table)


def render(table: dict) -> str:
    lines = ["| method | objective | trainable | lr (chosen on val) | seed | val | test | vs base (points) | p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cell, e in table["cells"].items():
        method, objective = cell.rsplit("-", 1)
        for seed, r in sorted(e.get("seeds", {}).items()):
            lines.append(f"| {method} | {objective} | {r['trainable_params']:,} | {e.get('lr', '?')} | {seed} | "
                         f"{r['val']:.1%} | {r['test']:.1%} | {100 * r['difference']:+.1f} | {r['p_value']:.2g} |")
    for key, c in table.get("svf_vs_lora", {}).items():
        lines.append(f"\nSVF vs {key}: {100 * c['difference']:+.1f} points (won {c['won']}, lost {c['lost']}, "
                     f"p = {c['p_value']:.2g})")
    return "\n".join(lines) + "\n"


def write(out: Path, table: dict) -> None:
    from transformer_squared.fileio import write_json, write_text

    write_json(out, table)
    write_text(out.with_suffix(".md"), render(table))


if __name__ == "__main__":
    main()
