"""Build docs/RESULTS.md (and docs/results/quality.png) from the JSON the other commands wrote.

    python bench/report.py

Nothing here is measured or typed by hand: every number is read from docs/results/*.json, and
every table names the command that regenerates its JSON. Missing inputs are listed, not faked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

# The shipped experts' held-out evals: task, run folder, expert folder, and per model
# (label, report file, the `t2 eval` options that wrote it).
TRAINED = [
    ("gsm8k", "math_run", "experts/math", "--limit 100"),
    ("mbpp", "code_run", "experts/code", "--limit 60"),
    ("arc_easy", "reasoning_run", "experts/reasoning", "--limit 300"),
    ("classify", "classify_run", "experts/classify", "--limit 150 --max-new-tokens 16"),
]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: list[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _eval_command(task: str, options: str, expert_dir: str | None, out: str) -> str:
    extra = f" --expert {expert_dir}" if expert_dir else ""
    return f"t2 eval --task {task} {options}{extra} --out {out}"


def trained_table(missing: list[str]) -> tuple[list[str], list[dict]]:
    rows: list[list] = []
    bars = []
    for task, run, expert_dir, options in TRAINED:
        base_f, exp_f = f"{task}_test_base.json", f"{task}_test_expert.json"
        base, exp = _load(RESULTS / run / base_f), _load(RESULTS / run / exp_f)
        meta = _load(ROOT / expert_dir / "expert.json")
        if base is None or exp is None or meta is None:
            missing.append(f"{run}/{base_f} or {exp_f} or {expert_dir}")
            continue
        training = meta.get("training", {})
        metrics = RESULTS / run / "metrics.jsonl"
        wall = None
        if metrics.is_file():
            logged = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            wall = max((r.get("elapsed") or 0) for r in logged) or None
        method = f"SVF-{training.get('objective', '?').upper()}"
        for label, rep, f in (("base", base, base_f), (expert_dir, exp, exp_f)):
            is_exp = label != "base"
            params = f"{training.get('trainable_params', 0):,}" if is_exp else "—"
            secs = f"{wall:,.0f} s" if is_exp and wall else "—"
            command = _eval_command(task, options, expert_dir if is_exp else None, f"docs/results/{run}/{f}")
            rows.append([task, label, f"{_pct(rep['accuracy'])} ({rep['correct']}/{rep['n']})", _ci(rep["ci95"]),
                         rep["n"], method if is_exp else "—", params, secs, f"`{command}`"])
            bars.append({"task": task, "label": "base" if not is_exp else Path(expert_dir).name,
                         "accuracy": rep["accuracy"], "ci95": rep["ci95"]})
    header = ["task", "model", "accuracy", "95% CI", "n", "method", "trainable", "training wall time", "command"]
    return (_table(header, rows) if rows else []), bars


def adaptation_table(missing: list[str]) -> list[str]:
    data = _load(RESULTS / "adaptation_table.json")
    if data is None:
        missing.append("adaptation_table.json (python bench/adaptation_table.py ...)")
        return []
    rows = []
    for r in data["rows"]:
        ratio = r["first_pass_s"] / r["second_pass_s"] if r["second_pass_s"] else 0.0
        rows.append([r["task"], r["config"], _pct(r["accuracy"]), _ci(r["ci95"]), r["n"], f"{r['first_pass_s']:.1f}",
                     f"{r['second_pass_s']:.1f}", f"{100 * ratio:.0f}%" if r["first_pass_s"] else "—"])
    return [f"Command: `{data['command']}`", ""] + _table(
        ["task", "strategy", "accuracy", "95% CI", "n", "first pass s", "second pass s", "first/second"], rows)


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _svf_core(d: dict) -> list[str]:
    f = d["forward_ratio_vs_plain"]
    return [f"**SVF on the default model** (`{d['command']}`, {d['machine']}):", ""] + _table(["measure", "value"], [
        [f"SVD of all {d['matrices']} target matrices", f"{d['svd_all_seconds']:.1f} s"],
        ["wrapping with the SVD cache", f"{d['wrap_with_cached_svd_seconds']:.2f} s"],
        ["merging an expert (all matrices)", f"{d['merge_all_seconds']:.2f} s"],
        ["forward, merged W' vs plain model", f"{f['merged']:.2f}×"],
        ["forward, factored vs plain model", f"{f['factored']:.2f}×"],
        ["resident memory with W' cached vs plain", f"{d['rss_after_forward_mib']['ratio']:.2f}×"]])


def _mixed_batch(d: dict) -> list[str]:
    return [f"**Mixed-expert batches** (`{d['command']}`, {d['machine']}):", ""] + _table(
        ["distinct experts", "one mixed batch", "one batch per expert", "speed-up"],
        [[r["distinct_experts"], f"{r['mixed_tokens_per_s']} tokens/s", f"{r['grouped_tokens_per_s']} tokens/s",
          f"{r['speedup_mixed_over_grouped']:.2f}×"] for r in d["rows"]])


def _inference_speed(d: dict) -> list[str]:
    return [f"**Generation tokens/s** (`{d['command']}`, {d['device']}, torch {d['torch']}):", ""] + _table(
        ["batch", "plain model", "SVF merged", "SVF factored", "mixed experts (3)"],
        [[r["batch"], r["plain_tokens_per_s"]] + [f"{r[f'{k}_tokens_per_s']} ({r[f'{k}_vs_plain']}×)"
                                                   for k in ("merged", "factored", "mixed")] for r in d["rows"]]
    ) + ["", "At batch 1 the \"mixed\" row holds one expert, so it takes the merged path and its time "
         "includes building W' (0.86 s on this model)."]


def _first_pass(d: dict) -> list[str]:
    return [f"**First pass alone** (`{d['command']}`, {d['machine']}; {d['requests']} requests, "
            f"{d['prompt_tokens']:,} prompt tokens):", ""] + _table(
        ["first pass", "seconds", "ms per request"],
        [[name, r["seconds"], r["ms_per_request"]] for name, r in d["rows"].items()])


def _train_step(d: dict) -> list[str]:
    return [f"**One RL step** (`{d['command']}`; {d['torch_threads']} torch thread(s); {d['trl']}):", ""] + _table(
        ["configuration", "trainable", "step s", "update s (median)", "update tokens/s", "peak RSS MiB"],
        [[r["config"], f"{r['trainable_params']:,}", r["step_seconds"], r["update_seconds_median"],
          r["update_tokens_per_s"], r["peak_rss_mib"]] for r in d["results"]])


# (results file, the command that writes it, how to show it)
SPEED = [("svf_core.json", "python bench/svf_core.py", _svf_core),
         ("mixed_batch.json", "python bench/mixed_batch.py", _mixed_batch),
         ("inference_speed.json", "python bench/inference_speed.py", _inference_speed),
         ("first_pass.json", "python bench/first_pass.py", _first_pass),
         ("train_step.json", "python bench/train_step.py", _train_step)]


def speed_tables(missing: list[str]) -> list[str]:
    out: list[str] = []
    for name, command, render in SPEED:
        data = _load(RESULTS / name)
        if data:
            out += render(data) + [""]
        else:
            missing.append(f"{name} ({command})")
    return out


def plot(bars: list[dict], path: Path) -> None:
    from charts import accuracy_panels

    panels: dict[str, list] = {}
    for b in bars:
        panels.setdefault(b["task"], []).append((b["label"], b["accuracy"], b["ci95"]))
    accuracy_panels(panels, path, ylabel="held-out accuracy %", width=2.6, rotate=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    args = ap.parse_args()
    missing: list[str] = []
    trained, bars = trained_table(missing)
    adapt = adaptation_table(missing)
    speed = speed_tables(missing)
    text = ["# Results", "",
            "Generated by `python bench/report.py` from `docs/results/*.json`; each table names the command that",
            "regenerates its numbers. Model: SmolLM2-135M-Instruct (the bundled default), 2 CPU cores.", "",
            "## The shipped experts on their own tasks (held-out test parts)", ""]
    text += trained + ["", "![held-out accuracy, base vs expert](results/quality.png)", ""] if trained else []
    text += ["## Self-adaptation on unseen tasks", ""] + (adapt or ["(not run yet)"]) + [""]
    if (RESULTS / "adaptation_table.png").is_file():
        text += ["![adaptation table](results/adaptation_table.png)", ""]
    text += ["## Speed and memory", ""] + speed
    if missing:
        text += ["## Not yet measured", ""] + [f"- {m}" for m in missing] + [""]
    from transformer_squared.fileio import write_text

    write_text(args.out, "\n".join(text) + "\n")
    if bars:
        plot(bars, RESULTS / "quality.png")
    print(f"wrote {args.out}" + (f"; missing: {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
