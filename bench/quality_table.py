"""The quality table: base / LoRA-SFT / LoRA-RL / SVF-SFT / SVF-RL on the training tasks' held-out parts.

    python bench/quality_table.py [--tasks gsm8k mbpp arc_easy] [--cells svf-sft lora-sft svf-rl lora-rl]
                                  [--device cpu] [--runs runs/quality]

Every cell is trained by the project's own ``t2 train`` (SVF or ``--method lora``, ``--objective sft``
or ``rl``) under one protocol per task (``PROTOCOL`` below: the same steps, batch, samples and
seed for SVF and LoRA; only the learning rate is each method's own), then scored by ``t2 eval`` on
the first N items of the task's test split (greedy, 95% Wilson intervals). The last weights of each
run are scored (``--eval-every 0``: no validation-based choice, so no cell gets an extra look at
data the others did not). Trainable parameters and training wall time (the whole ``t2 train``
process: model load, SVD or adapter set-up, steps, saving) come from the run itself.

Resumable: a finished run (``<runs>/<task>-<cell>/t2_bench_wall.json``) is not trained again and an
eval report that exists is not recomputed (``t2 eval`` resumes its own items). Writes
docs/results/quality_table.json, .md and .png; each eval's report and per-item JSONL go to
docs/results/quality/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

# Per task: held-out items, and the options of each objective's run (shared by SVF and LoRA).
# Sized for 2 CPU cores; pass --scale to multiply the steps on a faster machine.
PROTOCOL: dict[str, dict] = {
    "gsm8k": {
        "limit": 100,
        "sft": "--steps 20 --batch-size 16 --autocast bf16",
        "rl": "--steps 4 --batch-size 8 -k 4 --gen-prompts 8 --baseline mean --kl-coef 0.1 "
        "--max-new-tokens 256 --autocast bf16",
    },
    "mbpp": {
        "limit": 60,
        "sft": "--steps 20 --batch-size 16 --autocast bf16",
        "rl": "--steps 4 --batch-size 8 -k 4 --gen-prompts 8 --baseline mean --kl-coef 0.1 "
        "--max-new-tokens 256 --autocast bf16",
    },
    "arc_easy": {
        "limit": 300,
        "sft": "--steps 20 --batch-size 16 --autocast bf16",
        "rl": "--steps 10 --batch-size 8 -k 4 --gen-prompts 8 --baseline mean --kl-coef 0.1 --max-new-tokens 8",
    },
}
# Each method's learning rate: SVF the paper's 2e-3; LoRA (r=16, alpha=32 on q_proj/v_proj, the
# paper's baseline) 5e-4, a usual LoRA rate for a small model. Not tuned for either.
LR = {"svf": "2e-3", "lora": "5e-4"}
CELLS = ["svf-sft", "lora-sft", "svf-rl", "lora-rl"]
SEED = 0


def _t2(*args: str, log: Path | None = None) -> float:
    """Run ``t2 ARGS`` in a child process (output appended to ``log``); return its wall seconds."""
    cmd = [sys.executable, "-m", "transformer_squared.cli", *args]
    t = time.perf_counter()
    if log is None:
        subprocess.run(cmd, check=True, cwd=ROOT)
    else:
        with open(log, "a") as fh:
            fh.write("$ t2 " + " ".join(args) + "\n")
            fh.flush()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    return time.perf_counter() - t


def train_args(task: str, cell: str, out: Path, device: str, scale: float) -> list[str]:
    method, objective = cell.split("-")
    opts = PROTOCOL[task][objective].split()
    if scale != 1:
        i = opts.index("--steps")
        opts[i + 1] = str(max(1, round(int(opts[i + 1]) * scale)))
    args = [
        "train",
        "--task",
        task,
        "--out",
        str(out),
        "--method",
        method,
        "--objective",
        objective,
        "--lr",
        LR[method],
        "--seed",
        str(SEED),
        "--eval-every",
        "0",
        "--checkpoint-every",
        "0",
        "--no-progress",
        "--overwrite",
        *opts,
    ]
    if device != "cpu":
        args += ["--device", device]
    return args


def eval_args(task: str, cell: str, run: Path | None, report: Path, device: str, limit: int | None) -> list[str]:
    args = [
        "eval",
        "--task",
        task,
        "--limit",
        str(limit or PROTOCOL[task]["limit"]),
        "--out",
        str(report),
        "--no-progress",
    ]
    if run is not None:
        args += ["--lora" if cell.startswith("lora") else "--expert", str(run)]
    if device != "cpu":
        args += ["--device", device]
    return args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(PROTOCOL), choices=list(PROTOCOL))
    ap.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every run's --steps (e.g. 10 on a GPU)")
    ap.add_argument("--limit", type=int, default=None, help="held-out items per task (default: the protocol's)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "quality"), help="where the trained runs go")
    ap.add_argument("--out", default=str(RESULTS / "quality_table.json"))
    ap.add_argument("--report-only", action="store_true", help="rebuild .md/.png from the JSON only")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report_only:
        write_outputs(json.loads(out.read_text()), out)
        return
    runs, evals = Path(args.runs), out.parent / "quality"
    runs.mkdir(parents=True, exist_ok=True)
    evals.mkdir(parents=True, exist_ok=True)
    log = runs / "quality_table.log"
    suffix = "" if args.scale == 1 else f"-x{args.scale:g}"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    rows = {(r["task"], r["cell"]): r for r in previous.get("rows", [])}
    for task in args.tasks:
        for cell in ["base", *args.cells]:
            run = None if cell == "base" else runs / f"{task}-{cell}{suffix}"
            row: dict = {"task": task, "cell": cell, "trainable_params": 0, "train_seconds": 0.0}
            if run is not None:
                targs = train_args(task, cell, run, args.device, args.scale)
                marker = run / "t2_bench_wall.json"
                if not marker.is_file():
                    print(f"[{time.strftime('%H:%M:%S')}] train {task} {cell}", flush=True)
                    wall = _t2(*targs, log=log)
                    # the 1-minute load average when the run ended: > 2 on this 2-core machine means it shared the CPU
                    marker.write_text(
                        json.dumps(
                            {
                                "wall_seconds": round(wall, 1),
                                "command": "t2 " + " ".join(targs),
                                "load_average_end": round(os.getloadavg()[0], 2),
                            }
                        )
                    )
                done = json.loads(marker.read_text())
                config = json.loads((run / "train_config.json").read_text())
                row.update(
                    trainable_params=config["trainable_params"],
                    train_seconds=done["wall_seconds"],
                    train_command=done["command"],
                    train_load_average_end=done.get("load_average_end"),
                    **training_signal(run / "metrics.jsonl"),
                )
            report = evals / f"{task}-{cell}{suffix if run is not None else ''}.json"
            eargs = eval_args(task, cell, run, report, args.device, args.limit)
            if not report.is_file():
                print(f"[{time.strftime('%H:%M:%S')}] eval {task} {cell}", flush=True)
                row["eval_seconds"] = round(_t2(*eargs, log=log), 1)
            rep = json.loads(report.read_text())
            row.update(
                n=rep["n"],
                correct=rep["correct"],
                accuracy=rep["accuracy"],
                ci95=rep["ci95"],
                eval_command="t2 " + " ".join(a for a in eargs if a != "--no-progress"),
                eval_seconds=row.get("eval_seconds", _previous_eval_seconds(rows.get((task, cell)))),
            )
            rows[(task, cell)] = row
            data = {
                "command": " ".join(["python bench/quality_table.py", *sys.argv[1:]]),
                "device": args.device,
                "machine": _machine(args.device),
                "seed": SEED,
                "protocol": {t: PROTOCOL[t] for t in args.tasks},
                "lr": LR,
                "scale": args.scale,
                "rows": [rows[k] for k in sorted(rows, key=_order)],
            }
            write_json(out, data)
    write_outputs(data, out)


def training_signal(metrics: Path) -> dict:
    """What the run learned from: SFT, the reference NLL per token at the first and last three steps;
    RL, the mean reward and how many steps had a non-zero gradient (all-wrong groups give none)."""
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    steps = [r for r in steps if r.get("step", 0) > 0 and "loss" in r]
    if not steps:
        return {}
    if "nll_per_token" in steps[0]:
        head, tail = steps[:3], steps[-3:]
        return {
            "nll_first": round(sum(r["nll_per_token"] for r in head) / len(head), 3),
            "nll_last": round(sum(r["nll_per_token"] for r in tail) / len(tail), 3),
        }
    return {
        "reward_mean": round(sum(r.get("reward_mean", 0.0) for r in steps) / len(steps), 3),
        "steps": len(steps),
        "steps_with_gradient": sum(1 for r in steps if (r.get("grad_norm") or 0) > 0),
    }


def _previous_eval_seconds(row: dict | None) -> float | None:
    value = (row or {}).get("eval_seconds")
    return value if isinstance(value, (int, float)) else None


def _order(key: tuple[str, str]) -> tuple[int, int]:
    task, cell = key
    tasks = list(PROTOCOL)
    cells = ["base", *CELLS]
    return (tasks.index(task) if task in tasks else 99, cells.index(cell) if cell in cells else 99)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _machine(device: str) -> str:
    import torch
    from common import device_name

    return f"{device_name(device)}, torch {torch.__version__}"


def write_json(path: Path, data: dict) -> None:
    from transformer_squared.fileio import write_json as atomic

    atomic(path, data)


def table_lines(data: dict) -> list[str]:
    lines = [
        "| task | method | accuracy | 95% CI | n | trainable params | train wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['task']} | {r['cell']} | {100 * r['accuracy']:.1f}% | "
            f"[{100 * r['ci95'][0]:.1f}%, {100 * r['ci95'][1]:.1f}%] | {r['n']} | "
            f"{r['trainable_params']:,} | {r['train_seconds']:.0f} |"
        )
    return lines


def write_outputs(data: dict, out: Path) -> None:
    from charts import accuracy_panels

    from transformer_squared.fileio import write_text

    write_text(
        out.with_suffix(".md"),
        "\n".join([f"Command: `{data['command']}` ({data['machine']})", "", *table_lines(data)]) + "\n",
    )
    panels: dict[str, list] = {}
    for r in data["rows"]:
        panels.setdefault(f"{r['task']} (n={r['n']})", []).append((r["cell"], r["accuracy"], r["ci95"]))
    accuracy_panels(panels, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
