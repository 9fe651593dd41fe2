"""The adaptation table: every strategy against the base model, paired, on tasks no expert was trained on.

    python bench/adaptation_table.py                 # every stage, resumable
    python bench/adaptation_table.py --stage configs # only the per-configuration evaluations
    python bench/adaptation_table.py --stage routes  # only the first passes (routing + their cost)
    python bench/adaptation_table.py --stage table   # only the table, from what exists

The protocol is fixed here (``PROTOCOL``), before any run:

* experts: ``experts/reasoning`` (ARC-Easy) and ``experts/commonsense`` (CommonsenseQA), the two
  shipped experts that beat the base model on their own test splits; the router's labels also
  name ``math`` and ``code``, answered with the base weights (their SFT experts never beat it);
* unseen multiple-choice tasks, scored by log-likelihood in the cloze channel (the experts' training
  channel), token-normalised: ARC-Challenge (all 1,172 test items), OpenBookQA (all 500), SciQ,
  Winogrande and HellaSwag (the first 500 of their test splits); none was used for training,
  for choosing hyperparameters or for building a router;
* the paper's other two tasks, generated (``--max-new-tokens 256``): HumanEval (all 164) and
  MATH (the first 100 test problems; both sit at the 135M model's floor);
* configurations scored on every item: base, each expert, the uniform mixture (α = ½, ½), and
  for the multiple-choice tasks few-shot CEM mixtures (32 shots with the expected-accuracy
  fitness; the paper's 10 shots), shots drawn from the task's val/train split, never test;
* routed strategies (prompt, classifier, probe) pick one configuration per item: their answer is
  that configuration's answer on that item (the second pass is deterministic, and
  tests/test_adapt.py checks that routing then scoring equals scoring with the chosen expert);
* oracle: the best single expert per task, chosen on the test items (an upper bound, not a method);
* statistics: each strategy against base with the exact McNemar test, per task and pooled over
  the five unseen multiple-choice tasks; the first pass's cost is timed against the second pass on
  the same items, in the same process.

Writes docs/results/adaptation/ (per-item files), docs/results/adaptation_table.{json,md,png};
docs/adaptation.md quotes them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
OUT = RESULTS / "adaptation"

PROTOCOL = {
    "experts": ["experts/reasoning", "experts/commonsense"],
    "classifier": "experts/classify",
    "router": "experts/router",
    "mc_tasks": {"arc_challenge": None, "openbookqa": None, "sciq": 500, "winogrande": 500, "hellaswag": 500},
    "gen_tasks": {"humaneval": None, "math": 100},
    "split": "test",
    "channel": "cloze",
    "norm": "token",
    "max_new_tokens": 256,
    "fewshot": {"fewshot32": {"shots": 32, "population": 12, "iterations": 3},
                "fewshot10": {"shots": 10, "population": 12, "iterations": 3}},
    "timing_items": 64,
}
UNSEEN_MC = list(PROTOCOL["mc_tasks"])


def t2(*args: str, log: Path) -> None:
    with open(log, "a") as fh:
        fh.write("$ t2 " + " ".join(args) + "\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "transformer_squared.cli", *args], check=True, cwd=ROOT,
                       stdout=fh, stderr=subprocess.STDOUT)


def task_args(task: str) -> list[str]:
    p = PROTOCOL
    limit = p["mc_tasks"].get(task) if task in p["mc_tasks"] else p["gen_tasks"].get(task)
    args = ["--task", task, "--split", p["split"], "--no-progress"]
    if limit:
        args += ["--limit", str(limit)]
    if task in p["mc_tasks"]:
        args += ["--mode", "loglik", "--channel", p["channel"], "--norm", p["norm"]]
    else:
        args += ["--max-new-tokens", str(p["max_new_tokens"])]
    return args


def uniform_mixture() -> Path:
    """The uniform mixture of the experts, saved once."""
    path = OUT / "mixtures" / "uniform"
    if not (path / "expert.json").is_file():
        from transformer_squared import Expert

        experts = [Expert.load(ROOT / d) for d in PROTOCOL["experts"]]
        Expert.mix(experts, [1 / len(experts)] * len(experts), name="uniform").save(path)
    return path


def stage_configs(log: Path) -> None:
    experts = {Path(d).name: str(ROOT / d) for d in PROTOCOL["experts"]}
    for task in [*PROTOCOL["mc_tasks"], *PROTOCOL["gen_tasks"]]:
        folder = OUT / task
        folder.mkdir(parents=True, exist_ok=True)
        runs: list[tuple[str, list[str]]] = [("base", [])]
        runs += [(name, ["--expert", d]) for name, d in experts.items()]
        runs += [("uniform", ["--expert", str(uniform_mixture())])]
        if task in PROTOCOL["mc_tasks"]:
            for name, f in PROTOCOL["fewshot"].items():
                runs.append((name, ["--adapt", "fewshot", "--experts", *experts.values(), "--shots", str(f["shots"]),
                                    "--cem-population", str(f["population"]), "--cem-iterations",
                                    str(f["iterations"]), "--mixture-out", str(OUT / "mixtures" / f"{task}-{name}")]))
        for name, extra in runs:
            out = folder / f"{name}.json"
            if out.is_file():
                continue
            t = time.perf_counter()
            t2("eval", *task_args(task), *extra, "--out", str(out), log=log)
            print(f"{task} {name}: {time.perf_counter() - t:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["configs", "routes", "table", "all"], default="all")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "log.txt"
    if args.stage in ("configs", "all"):
        stage_configs(log)


if __name__ == "__main__":
    main()
