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
# (experts/reasoning, now trained by the exact objective, is in the paired expert table instead.)
TRAINED = [
    ("gsm8k", "math_run", "experts/math", "--limit 100"),
    ("mbpp", "code_run", "experts/code", "--limit 60"),
]
# (experts/classify is measured as a router instead: its routing accuracy is in the adaptation table.)


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
            rows.append(
                [
                    task,
                    label,
                    f"{_pct(rep['accuracy'])} ({rep['correct']}/{rep['n']})",
                    _ci(rep["ci95"]),
                    rep["n"],
                    method if is_exp else "—",
                    params,
                    secs,
                    f"`{command}`",
                ]
            )
            bars.append(
                {
                    "task": task,
                    "label": "base" if not is_exp else Path(expert_dir).name,
                    "accuracy": rep["accuracy"],
                    "ci95": rep["ci95"],
                }
            )
    header = ["task", "model", "accuracy", "95% CI", "n", "method", "trainable", "training wall time", "command"]
    return (_table(header, rows) if rows else []), bars


CELL_LABELS = {"base": "base", "svf-sft": "SVF-SFT", "lora-sft": "LoRA-SFT", "svf-rl": "SVF-RL", "lora-rl": "LoRA-RL"}


def _signal(r: dict) -> str:
    """SFT: reference NLL/token, first → last three steps; RL: mean reward and steps with a gradient."""
    if "nll_first" in r:
        return f"NLL {r['nll_first']} → {r['nll_last']}"
    if "reward_mean" in r:
        moved = "" if r["steps_with_gradient"] else " (weights never moved)"
        return f"reward {r['reward_mean']:+.2f}, {r['steps_with_gradient']}/{r['steps']} steps with a gradient{moved}"
    return "—"


def quality_table(missing: list[str]) -> list[str]:
    """SVF vs LoRA, SFT vs RL, on the training tasks' held-out parts (bench/quality_table.py)."""
    data = _load(RESULTS / "quality_table.json")
    if data is None:
        missing.append("quality_table.json (python bench/quality_table.py)")
        return []
    rows = [
        [
            r["task"],
            CELL_LABELS.get(r["cell"], r["cell"]),
            f"{_pct(r['accuracy'])} ({r['correct']}/{r['n']})",
            _ci(r["ci95"]),
            f"{r['trainable_params']:,}" if r["trainable_params"] else "—",
            f"{r['train_seconds']:,.0f} s" if r["train_seconds"] else "—",
            _signal(r),
            r.get("train_load_average_end") if r.get("train_load_average_end") is not None else "—",
        ]
        for r in data["rows"]
    ]
    proto = [
        f"- {t}: held-out items {p['limit']}; SFT `{p['sft']}`; RL `{p['rl']}`" for t, p in data["protocol"].items()
    ]
    return (
        [
            f"Command: `{data['command']}` ({data['machine']}; seed {data['seed']}; learning rates "
            f"{', '.join(f'{k} {v}' for k, v in data['lr'].items())}; last weights of each run scored, "
            f"no validation-based choice). Per-run commands are in `docs/results/quality_table.json`.",
            "",
            "Protocol (the same for SVF and LoRA):",
            "",
        ]
        + proto
        + [""]
        + _table(
            [
                "task",
                "method",
                "accuracy",
                "95% CI",
                "trainable",
                "training wall time",
                "what training saw",
                "load at end",
            ],
            rows,
        )
        + [
            "",
            'Wall time covers the whole `t2 train` process on a shared 2-core machine; "load at end" is the '
            "1-minute load average when the run finished (above 2, the run shared the CPU and its time is "
            "inflated; — where it was not recorded). Per-step speed is compared side by side in the speed "
            "tables below.",
        ]
        + ["", "![SVF vs LoRA on the training tasks](results/quality_table.png)"]
    )


def expert_table(missing: list[str]) -> list[str]:
    """Each shipped expert against base, paired on the same test items, per answer mode (bench/expert_table.py)."""
    path = RESULTS / "expert_table.json"
    if not path.is_file():
        missing.append("expert_table.json (python bench/expert_table.py --expert ... --task ...)")
        return []
    rows = _load(path)["rows"]
    body = [
        [
            r["expert"],
            r["task"] + ("" if r["trained_on"] else " (unseen)"),
            r["mode"],
            r["n"],
            _pct(r["base"]),
            _pct(r["with_expert"]),
            f"{100 * r['difference']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}]",
            f"{r['won']} / {r['lost']}",
            f"{r['p_value']:.2g}",
            f"±{_pct(r['detectable'])}",
        ]
        for r in rows
    ]
    return [
        "Each row: `t2 eval` of the base model and of the expert on the same test items, then `t2 compare` "
        "(commands in `docs/results/expert_table.json`; reports and per-item files in "
        "`docs/results/experts/`). Modes: `cloze` = `--mode loglik --channel cloze` (option texts scored after "
        "`Question: ...\\nAnswer:`, per-token normalisation), `letter` = `--mode loglik --channel letter` (the "
        "option letter as the first answer token after the chat prompt, what generation samples), `generate` = "
        'greedy generation read by the checker. "detectable": the smallest difference this test sees with '
        "80% power at α = 0.05.",
        "",
    ] + _table(
        [
            "expert",
            "task",
            "mode",
            "items",
            "base",
            "with expert",
            "difference, points [95% CI]",
            "won / lost",
            "McNemar p",
            "detectable",
        ],
        body,
    )


def mc_base_table(missing: list[str]) -> list[str]:
    """The default model on every bundled multiple-choice task, per answer mode (bench/mc_base_table.py)."""
    data = _load(RESULTS / "mc_base_table.json")
    if data is None:
        missing.append("mc_base_table.json (python bench/mc_base_table.py)")
        return []
    md = (RESULTS / "mc_base_table.md").read_text().splitlines() if (RESULTS / "mc_base_table.md").is_file() else []
    status = f" Status: {data['status']}." if data.get("status") else ""
    return [
        f"Base model per multiple-choice task and answer mode, on val (command: `{data['command']}`): the "
        f"table the training tasks were chosen from.{status}",
        "",
    ] + md


def adaptation_table(missing: list[str]) -> list[str]:
    data = _load(RESULTS / "adaptation_table.json")
    md = RESULTS / "adaptation_table.md"
    if data is None or "tasks" not in data or not md.is_file():
        missing.append("adaptation_table.json (python bench/adaptation_table.py)")
        return []
    return md.read_text().splitlines()


def svf_vs_lora_table(missing: list[str]) -> list[str]:
    """SVF against both LoRA sizes, RL (exact) and SFT, two seeds, plus the sampled-REINFORCE row."""
    data = _load(RESULTS / "svf_vs_lora.json")
    md = RESULTS / "svf_vs_lora.md"
    if data is None or not md.is_file():
        missing.append("svf_vs_lora.json (python bench/svf_vs_lora.py)")
        return []
    cells = data["cells"]
    want = {f"{m}-{o}": 2 for o in ("exact", "sft") for m in data["methods"]}
    if "reinforce" in data:
        want[data["reinforce"]["cell"]] = 1
    open_cells = [c for c, n in want.items() if len(cells.get(c, {}).get("seeds", {})) < n]
    if open_cells:
        missing.append(f"svf_vs_lora: cells not finished yet: {', '.join(open_cells)} (python bench/svf_vs_lora.py)")
    p, task = data["protocol"], data["task"]
    rf = data.get("reinforce")
    reinforce = (
        f" The sampled-REINFORCE row is one run ({rf['steps']} steps x {rf['batch_size']} prompts x "
        f"K = {rf['samples_per_prompt']}, lr {rf['lr']}) on generated answers, against the base model generated "
        "the same way."
        if rf
        else ""
    )
    return [
        f"{task}, the whole test split, paired against the base model scored the same way (command: "
        f"`python bench/svf_vs_lora.py --task {task}`; protocol in its docstring): the grid runs "
        f"{p['steps']} steps x {p['batch_size']} questions, each method's lr chosen on val from three, then "
        f"a second seed at that lr.{reinforce}",
        "",
        *md.read_text().splitlines(),
    ]


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def _svf_core(d: dict) -> list[str]:
    f = d["forward_ratio_vs_plain"]
    return [f"**SVF on the default model** (`{d['command']}`, {d['machine']}):", ""] + _table(
        ["measure", "value"],
        [
            [f"SVD of all {d['matrices']} target matrices", f"{d['svd_all_seconds']:.1f} s"],
            ["wrapping with the SVD cache", f"{d['wrap_with_cached_svd_seconds']:.2f} s"],
            ["merging an expert (all matrices)", f"{d['merge_all_seconds']:.2f} s"],
            ["forward, merged W' vs plain model", f"{f['merged']:.2f}×"],
            ["forward, factored vs plain model", f"{f['factored']:.2f}×"],
            ["resident memory with W' cached vs plain", f"{d['rss_after_forward_mib']['ratio']:.2f}×"],
        ],
    )


def _mixed_batch(d: dict) -> list[str]:
    return [f"**Mixed-expert batches** (`{d['command']}`, {d['machine']}):", ""] + _table(
        ["distinct experts", "one mixed batch", "one batch per expert", "speed-up"],
        [
            [
                r["distinct_experts"],
                f"{r['mixed_tokens_per_s']} tokens/s",
                f"{r['grouped_tokens_per_s']} tokens/s",
                f"{r['speedup_mixed_over_grouped']:.2f}×",
            ]
            for r in d["rows"]
        ],
    )


def _ceiling(d: dict, dtype: str) -> float | None:
    """The measured matmul GFLOP/s of the device that wrote ``d`` (bench/matmul_ceiling.py), if any."""
    cuda = str(d.get("device", "cpu")).startswith("cuda")
    ceil = _load(RESULTS / ("gpu" if cuda else "") / "matmul_ceiling.json")
    entry = (ceil or {}).get("devices", {}).get("cuda" if cuda else "cpu")
    return entry["ceiling_gflops"].get(dtype) if entry else None


def _fraction(gflops: float, ceiling: float | None) -> str:
    return f"{gflops:,.1f} ({100 * gflops / ceiling:.1f}%)" if ceiling else f"{gflops:,.1f}"


def _inference_speed(d: dict) -> list[str]:
    dtype = d.get("dtype", "float32")
    fpt = d.get("flops_per_token")
    ceiling = _ceiling(d, dtype)
    header = ["batch", "plain model", "SVF merged", "SVF factored", "mixed experts (3)"]
    rows = []
    for r in d["rows"]:
        row = [r["batch"], r["plain_tokens_per_s"]] + [
            f"{r[f'{k}_tokens_per_s']} ({r[f'{k}_vs_plain']}×)" for k in ("merged", "factored", "mixed")
        ]
        if fpt:
            row.append(_fraction(r["merged_tokens_per_s"] * fpt / 1e9, ceiling))
        rows.append(row)
    if fpt:
        header.append("merged GFLOP/s (% of matmul ceiling)")
    where = d.get("device_name", d["device"])
    return (
        [f"**Generation tokens/s** (`{d['command']}`; {where}, {dtype}, torch {d['torch']}):", ""]
        + _table(header, rows)
        + [
            "",
            'At batch 1 the "mixed" row holds one expert, so it takes the merged path and its '
            "time includes building W'.",
        ]
    )


def _first_pass(d: dict) -> list[str]:
    return [
        f"**First pass alone** (`{d['command']}`, {d['machine']}; {d['requests']} requests, "
        f"{d['prompt_tokens']:,} prompt tokens):",
        "",
    ] + _table(
        ["first pass", "seconds", "ms per request"],
        [[name, r["seconds"], r["ms_per_request"]] for name, r in d["rows"].items()],
    )


def _train_step(d: dict) -> list[str]:
    fpt = d.get("update_flops_per_token")
    rows = []
    for r in d["results"]:
        upd = r.get("update_seconds_median")
        frac = "—"
        if fpt and upd and r.get("update_tokens_per_s"):
            dtype = "bfloat16" if r["config"].endswith("bf16") else "float32"
            frac = _fraction(r["update_tokens_per_s"] * fpt / 1e9, _ceiling(d, dtype))
        rows.append(
            [
                r["config"],
                f"{r['trainable_params']:,}",
                r["step_seconds"],
                upd if upd is not None else "(in step)",
                r.get("update_tokens_per_s", "—"),
                r.get("tokens_per_s", "—"),
                frac,
                r.get("peak_cuda_mib", r["peak_rss_mib"]),
            ]
        )
    mem = "peak CUDA MiB" if any("peak_cuda_mib" in r for r in d["results"]) else "peak RSS MiB"
    where = d.get("device_name") or f"{d['torch_threads']} torch thread(s)"
    return [
        f"**One RL step** (`{d['command']}`; {where}; B={d['batch_size']} prompts × K={d['samples_per_prompt']}, "
        f"{d['max_new_tokens']} new tokens at most; {d['trl']}):",
        "",
    ] + _table(
        [
            "configuration",
            "trainable",
            "step s",
            "update s (median)",
            "update tokens/s",
            "generated tokens/s",
            "update GFLOP/s (% of ceiling)",
            mem,
        ],
        rows,
    )


def _matmul(d: dict) -> list[str]:
    out = []
    for e in d["devices"].values():
        sq = {(r["dtype"], r["n"]): r["gflops"] for r in e["square"]}
        sizes = sorted({n for _, n in sq})
        out += (
            [f"**Matrix-multiply ceiling, {e['device_name']}** (`{e['command']}`):", ""]
            + _table(
                ["dtype"] + [f"n={n}" for n in sizes] + ["ceiling GFLOP/s"],
                [
                    [dt] + [f"{sq.get((dt, n), 0):,.0f}" for n in sizes] + [f"{e['ceiling_gflops'][dt]:,.0f}"]
                    for dt in e["ceiling_gflops"]
                ],
            )
            + [""]
        )
        shapes = e.get("model_shapes", [])
        if shapes:
            out += [
                "Shapes of the default model's MLP (tokens × 576 · 576 × 1536 and back): "
                + ", ".join(f"{r['dtype']} {r['m']}×{r['k']}·{r['k']}×{r['n']} {r['gflops']:,.0f}" for r in shapes)
                + " GFLOP/s.",
                "",
            ]
    return out


def _scaling(d: dict) -> list[str]:
    mid = d["middle"]
    rows = []
    for sweep in ("width", "seq", "batch"):
        pts = sorted({r[sweep] for r in d["rows"] if r["sweep"] == sweep})
        for method in dict.fromkeys(r["method"] for r in d["rows"]):
            by = {r[sweep]: r for r in d["rows"] if r["sweep"] == sweep and r["method"] == method}
            rows.append(
                [sweep, method]
                + [
                    f"{by[p]['step_ms']:.1f} ms / {by[p]['extra_mib']:,.0f} MiB"
                    if p in by and by[p]["extra_mib"] is not None
                    else f"{by[p]['step_ms']:.1f} ms"
                    if p in by
                    else "—"
                    for p in pts
                ]
            )
    out = [
        f"**How an update's cost grows** (`{d['command']}`; {d['device_name']}; {d['layers']}-layer random Llama; "
        f"fixed point width {mid['width']}, sequence {mid['seq']}, batch {mid['batch']}). Each cell: step time / "
        "extra memory of training (activations, gradients, optimiser state):",
        "",
    ]
    for sweep in ("width", "seq", "batch"):
        pts = sorted({r[sweep] for r in d["rows"] if r["sweep"] == sweep})
        out += _table([f"method \\ {sweep}"] + [str(p) for p in pts], [r[1:] for r in rows if r[0] == sweep]) + [""]
    return out


# (results file, the command that writes it, how to show it)
def _throughput(d: dict) -> list[str]:
    """Whole RL steps before vs after prompt sharing and bf16 (bench/train_step.py --configs svf-throughput)."""
    r = next((x for x in d["results"] if "throughput" in x), None)
    if r is None:
        return []
    tp = r["throughput"]
    rows = [
        [
            name,
            f"{'shared' if v['share_prompt'] else 'per row'}, {v['autocast']} / {v.get('sample_autocast', 'none')}",
            v.get("micro_batches", "—"),
            v["gen_median"],
            v["update_median"],
            v["step_median"],
            v["completions_per_s"],
            v.get("completion_tokens_median", "—"),
        ]
        for name, v in tp.items()
        if not name.startswith("speedup")
    ]
    loaded = _load(RESULTS / "train_step_throughput_loaded.json")  # an earlier run with other jobs on the cores
    again = ""
    if loaded and (lt := next((x["throughput"] for x in loaded["results"] if "throughput" in x), None)):
        load = loaded.get("machine", {}).get("load_average_at_end", [0])[0]
        again = (
            f" An earlier version of the code and of this bench (before packed completions, and with the per-row layout in the shared layout's micro-batch), run while other jobs shared the cores (load average {load:.1f} on "
            f"{loaded.get('machine', {}).get('cpus', '?')} cores, `train_step_throughput_loaded.json`): "
            f"{lt['speedup']}× (before {lt['before']['completions_per_s']}, after {lt['after']['completions_per_s']} "
            "completions/s); contention slows the two layouts unequally, so the ratio depends on the load."
        )
    return [
        f"### One RL step, before and after prompt sharing (`{d['command']}`)",
        "",
        f"{d['batch_size']} prompts × {d['samples_per_prompt']} samples of up to {d['max_new_tokens']} tokens "
        f"(ARC-Easy, short answers) on {d.get('device_name', d['device'])}; the layouts alternate in one "
        f"process, same weights, median of {d['repeats']} rounds after a warm-up round: "
        f"**{tp['speedup']}×** the completions per second"
        + (
            f", {tp['speedup_bf16_sampling']}× with sampling in bf16 as well (`--sample-autocast bf16`, opt-in: "
            "it draws from the bf16 model's distribution)."
            if "speedup_bf16_sampling" in tp
            else "."
        )
        + (
            f" Load average at the end {d['machine']['load_average_at_end'][0]:.1f} on "
            f"{d['machine']['cpus']} cores: other jobs shared the machine, both layouts alike."
            if d.get("machine", {}).get("load_average_at_end", [0])[0] > d.get("machine", {}).get("cpus", 1e9)
            else ""
        )
        + again,
        "",
    ] + _table(
        [
            "layout",
            "prompt encoding, update / sampling dtype",
            "micro-batches",
            "sampling s",
            "update s",
            "step s",
            "completions/s",
            "completion tokens (median)",
        ],
        rows,
    )


SPEED = [
    ("matmul_ceiling.json", "python bench/matmul_ceiling.py", _matmul),
    ("svf_core.json", "python bench/svf_core.py", _svf_core),
    ("mixed_batch.json", "python bench/mixed_batch.py", _mixed_batch),
    ("inference_speed.json", "python bench/inference_speed.py", _inference_speed),
    ("first_pass.json", "python bench/first_pass.py", _first_pass),
    ("train_step.json", "python bench/train_step.py", _train_step),
    ("train_step_bf16.json", "python bench/train_step.py --configs svf-merged,svf-merged-bf16,svf-ab ...", _train_step),
    ("scaling.json", "python bench/scaling.py", _scaling),
    (
        "train_step_throughput.json",
        "python bench/train_step.py --configs svf-throughput --batch-size 4 "
        "--samples-per-prompt 8 --max-new-tokens 8 --threads 1",
        _throughput,
    ),
]
# the same benchmarks on a GPU (sh bench/speed_suite.sh MODEL docs/results/gpu cuda), when one was lent
GPU = [
    ("gpu/matmul_ceiling.json", _matmul),
    ("gpu/train_step.json", _train_step),
    ("gpu/inference_speed.json", _inference_speed),
    ("gpu/inference_speed_bf16.json", _inference_speed),
    ("gpu/scaling.json", _scaling),
]


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


def gpu_tables() -> list[str]:
    out: list[str] = []
    for name, render in GPU:
        data = _load(RESULTS / name)
        if data:
            out += render(data) + [""]
    return out


def _peak(r: dict) -> int:
    return r.get("peak_cuda_mib", r["peak_rss_mib"])


def speed_notes(folder: str) -> list[str]:
    """What the speed tables of one device say, with the numbers read from them."""
    notes = []
    t = _load(RESULTS / folder / "train_step.json")
    if t:
        by = {r["config"]: r for r in t["results"]}
        if {"svf-merged", "lora"} <= set(by):
            svf, lora = by["svf-merged"], by["lora"]
            parts = [f"SVF merged {svf['update_seconds_median'] / lora['update_seconds_median']:.2f}×"]
            if "svf-factored" in by:
                parts.append(
                    f"SVF factored {by['svf-factored']['update_seconds_median'] / lora['update_seconds_median']:.2f}×"
                )
            notes.append(
                f"- RL step update, against LoRA's {lora['update_seconds_median']} s: {', '.join(parts)}. All of them "
                "back-propagate through every layer; SVF adds the rank-r transform around each MLP matrix "
                "(factored) or rebuilding W' and its gradient (merged). The update runs "
                f"{svf['micro_batches']} micro-batches (the trainer's automatic size when it ran, whatever the "
                "device; `--grad-accum` sets it)."
            )
            if "trl-grpo-lora" in by:
                trl = by["trl-grpo-lora"]
                notes.append(
                    f"- TRL's GRPOTrainer takes {trl['step_seconds']} s for a whole step against "
                    f"{svf['step_seconds']} s for ours (generation {svf.get('gen_seconds')} s of it); its update takes all "
                    f"{t['batch_size'] * t['samples_per_prompt']} completions as one batch (per_device_train_batch_size "
                    f"= B×K), ours {svf['micro_batches']} micro-batches. With GRPOConfig's default gradient checkpointing it held {_peak(trl)} MiB at peak "
                    f"against {_peak(svf)} MiB (SVF merged) and "
                    f"{_peak(by.get('svf-factored', svf))} MiB (SVF factored)."
                )
    sc = _load(RESULTS / folder / "scaling.json")
    if sc:
        width = [r for r in sc["rows"] if r["sweep"] == "width"]
        top = max(r["width"] for r in width)
        at = {r["method"]: r for r in width if r["width"] == top}
        if {"svf-factored", "svf-merged", "lora", "full"} <= set(at) and all(r["extra_mib"] for r in at.values()):
            f, m, lo, full = at["svf-factored"], at["svf-merged"], at["lora"], at["full"]
            notes.append(
                f"- At width {top}: an SVF-factored update takes {f['step_ms'] / lo['step_ms']:.2f}× LoRA's time and "
                f"{f['extra_mib'] / full['extra_mib']:.0%} of full fine-tuning's extra memory (LoRA "
                f"{lo['extra_mib'] / full['extra_mib']:.0%}); the merged path needs "
                f"{m['extra_mib'] / f['extra_mib']:.2f}× the factored path's memory, for the dense W' and its gradient. "
                "SVF's extra time is the rank-r transform around each MLP matrix (factored) or rebuilding W' (merged)."
            )
    inf = _load(RESULTS / folder / "inference_speed.json")
    if inf:
        last = inf["rows"][-1]
        notes.append(
            f"- Generation at batch {last['batch']}: merged {last['merged_vs_plain']}× the plain model, factored "
            f"{last['factored_vs_plain']}×, a batch mixing 3 experts {last['mixed_vs_plain']}×; the merged path runs "
            "the plain model's matmuls on W' (same shapes), the factored path adds two thin matmuls per adapted matrix."
        )
    return notes


def headlines() -> list[str]:
    """A few figures read from the results, for the top of RESULTS.md and the README."""
    lines = []
    e = _load(RESULTS / "expert_table.json")
    if e:
        for r in e["rows"]:
            where = r["task"] if r["trained_on"] else f"{r['task']} (never trained on)"
            lines.append(
                f"- `experts/{r['expert']}` on the {where} test split ({r['n']} items, {r['mode']} answers): "
                f"base {_pct(r['base'])} → {_pct(r['with_expert'])} ({100 * r['difference']:+.1f} points, "
                f"won {r['won']} / lost {r['lost']}, McNemar p = {r['p_value']:.2g})."
            )
    versus = _load(RESULTS / "svf_vs_lora.json")
    q = _load(RESULTS / "quality_table.json")
    if versus and versus.get("svf_vs_lora"):
        _, verdict, detail = _svf_vs_lora_claim(versus)
        lines.append(f"- SVF against LoRA ({verdict}): {detail}")
    elif q:
        params = {r["cell"].split("-")[0]: r["trainable_params"] for r in q["rows"] if r["cell"] != "base"}
        if params.get("svf") and params.get("lora"):
            lines.append(
                f"- An SVF expert trains {params['svf']:,} numbers; the paper's LoRA baseline (r=16 on q/v) "
                f"{params['lora']:,} ({100 * params['svf'] / params['lora']:.1f}% of it)."
            )
        for task in dict.fromkeys(r["task"] for r in q["rows"]):
            rs = {r["cell"]: r for r in q["rows"] if r["task"] == task}
            if "base" in rs and len(rs) > 1:
                parts = ", ".join(f"{CELL_LABELS.get(c, c)} {_pct(r['accuracy'])}" for c, r in rs.items())
                lines.append(f"- {task} held-out ({rs['base']['n']} items): {parts}.")
    a = _load(RESULTS / "adaptation_table.json")
    if a and a.get("pooled"):
        for name in ("classifier", "probe", "prompt", "fewshot32"):
            c = a["pooled"].get(name)
            if c:
                lines.append(
                    f"- Self-adaptation, {name}, pooled over the unseen multiple-choice tasks ({c['n']} items): "
                    f"{_pct(c['accuracy_a'])} → {_pct(c['accuracy_b'])} ({100 * c['difference']:+.1f} points, "
                    f"exact McNemar p = {c['p_value']:.2g})."
                )
    for name in ("gpu/train_step.json", "train_step.json"):
        t = _load(RESULTS / name)
        if t:
            by = {r["config"]: r for r in t["results"]}
            if "svf-merged" in by and "lora" in by:
                where = t.get("device_name") or "2 CPU cores"
                extra = ""
                if "trl-grpo-lora" in by:
                    extra = f", TRL GRPOTrainer + LoRA {by['trl-grpo-lora']['step_seconds']} s"
                lines.append(
                    f"- One RL step ({t['batch_size']}×{t['samples_per_prompt']} completions of up to "
                    f"{t['max_new_tokens']} tokens) on {where}: SVF {by['svf-merged']['step_seconds']} s, "
                    f"LoRA in the same loop {by['lora']['step_seconds']} s{extra}."
                )
    for name in ("gpu/inference_speed.json", "inference_speed.json"):
        i = _load(RESULTS / name)
        if i:
            r = i["rows"][-1]
            lines.append(
                f"- Generation at batch {r['batch']} on {i.get('device_name', i['device'])}: SVF merged "
                f"{r['merged_vs_plain']}× the plain model's tokens/s, a mixed batch of 3 experts "
                f"{r['mixed_vs_plain']}×."
            )
    return lines


ALPHA = 0.05  # a difference counts when the paired exact McNemar test gives p < ALPHA


def _paired(report_a: Path, report_b: Path):
    """t2 compare's paired comparison of two eval reports (B against A), or None without per-item files."""
    from transformer_squared.errors import T2Error
    from transformer_squared.stats import compare_reports

    try:
        return compare_reports(report_a, report_b)[0]
    except T2Error:
        return None


def _verdict(cmp, a_name: str, b_name: str) -> tuple[str, bool]:
    """``b`` against ``a`` in words, and whether b is above a with p < ALPHA (paired)."""
    if cmp.difference == 0:
        return f"{b_name} = {a_name} {_pct(cmp.accuracy_a)} (won {cmp.won}, lost {cmp.lost})", False
    word = "above" if cmp.difference > 0 else "below"
    sig = cmp.p_value < ALPHA
    return (
        f"{b_name} {_pct(cmp.accuracy_b)} {word} {a_name} {_pct(cmp.accuracy_a)} (won {cmp.won}, lost "
        f"{cmp.lost}, McNemar p = {cmp.p_value:.2g}{'' if sig else '; the test sees ±' + _pct(cmp.detectable)})",
        sig and cmp.difference > 0,
    )


def _svf_vs_lora_claim(versus: dict) -> tuple[str, str, str]:
    """The SVF-vs-LoRA claim from bench/svf_vs_lora.py's paired pairs (SVF is b, LoRA is a)."""
    params = {
        cell.split("-")[0]: seed["trainable_params"]
        for cell, c in versus["cells"].items()
        for seed in c.get("seeds", {}).values()
        if "trainable_params" in seed
    }
    parts, above, below = [], 0, 0
    for key, c in versus["svf_vs_lora"].items():
        objective, lora, seed = key.split("/")
        sig = c["p_value"] < ALPHA
        above += sig and c["difference"] > 0
        below += sig and c["difference"] < 0
        parts.append(
            f"{objective} vs {lora} {seed}: {100 * c['difference']:+.1f} points "
            f"[{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}], p = {c['p_value']:.2g}"
        )
    n = len(parts)
    verdict = (
        "reproduced"
        if above == n
        else f"not reproduced: LoRA above in {below} of {n} paired comparisons"
        if below
        else f"not reproduced at this scale: SVF above in {above} of {n} paired comparisons, no other difference shown"
        if above
        else f"no difference shown in {n} paired comparisons"
    )
    sizes = ", ".join(f"{k} {v:,}" for k, v in sorted(params.items(), key=lambda kv: kv[1]))
    return (
        "SVF-RL beats LoRA on the training tasks with about a tenth of the parameters",
        verdict,
        f"{versus['task']}, whole test split, SVF minus LoRA, paired (trainable parameters: {sizes}): "
        + "; ".join(parts)
        + ".",
    )


def claims() -> list[tuple[str, str, str]]:
    """The paper's central claims next to what the results here show, as (claim, verdict, detail);
    a difference counts only when the paired exact McNemar test on the same items gives p < 0.05."""
    out = []
    e = _load(RESULTS / "expert_table.json")
    if e:
        own = [r for r in e["rows"] if r["trained_on"]]
        parts = [
            f"{r['expert']} on {r['task']} ({r['mode']}, {r['n']} items): {_pct(r['base'])} → "
            f"{_pct(r['with_expert'])}, p = {r['p_value']:.2g}"
            for r in own
        ]
        by_mode: dict[str, list[bool]] = {}
        for r in own:
            by_mode.setdefault(r["mode"], []).append(r["difference"] > 0 and r["p_value"] < ALPHA)
        verdict = "; ".join(f"{m}: {sum(v)} of {len(v)} experts" for m, v in by_mode.items()) or "not measured yet"
        out.append(
            (
                "An RL-trained SVF expert improves its own task (held-out test, paired)",
                verdict,
                "; ".join(parts) + "." if parts else "",
            )
        )
    versus = _load(RESULTS / "svf_vs_lora.json")
    q = _load(RESULTS / "quality_table.json")
    if versus and versus.get("svf_vs_lora"):
        out.append(_svf_vs_lora_claim(versus))
    elif q:
        params = {r["cell"].split("-")[0]: r["trainable_params"] for r in q["rows"] if r["cell"] != "base"}
        parts, wins = [], 0
        for task in dict.fromkeys(r["task"] for r in q["rows"]):
            rs = {r["cell"]: r for r in q["rows"] if r["task"] == task}
            if "svf-rl" in rs and "lora-rl" in rs:
                folder = RESULTS / "quality"
                cmp = _paired(folder / f"{task}-lora-rl.json", folder / f"{task}-svf-rl.json")
                if cmp is None:
                    parts.append(f"{task}: no per-item results, no verdict")
                    continue
                text, won = _verdict(cmp, "LoRA-RL", "SVF-RL")
                parts.append(f"{task}: {text}")
                wins += won
        verdict = (
            "not measured yet" if not parts else "reproduced" if wins == len(parts) else "not reproduced at this scale"
        )
        ratio = f"{params['svf'] / params['lora']:.1%}" if params.get("svf") and params.get("lora") else "?"
        out.append(
            (
                "SVF-RL beats LoRA on the training tasks with about a tenth of the parameters",
                verdict,
                f"Parameters: SVF {ratio} of LoRA's. "
                + ("; ".join(parts) + "." if parts else "(RL cells not run yet)"),
            )
        )
    a = _load(RESULTS / "adaptation_table.json")
    if a and a.get("pooled"):
        free = {n: a["pooled"][n] for n in ("prompt", "classifier", "probe") if n in a["pooled"]}
        wins = [n for n, c in free.items() if c["p_value"] < 0.05 and c["difference"] > 0]
        out.append(
            (
                "Self-adaptation helps on unseen tasks",
                ("yes: " + ", ".join(wins)) if wins else "not shown",
                "Pooled over the unseen multiple-choice tasks, against base: "
                + "; ".join(
                    f"{n} {100 * c['difference']:+.1f} points (p = {c['p_value']:.2g})" for n, c in free.items()
                )
                + ".",
            )
        )
        fs = a.get("fewshot_vs_best_expert", {})
        if fs:
            c = fs.get("fewshot32") or next(iter(fs.values()))
            verdict = (
                "yes"
                if c["difference"] > 0 and c["p_value"] < 0.05
                else "no"
                if c["difference"] < 0 and c["p_value"] < 0.05
                else "no difference shown"
            )
            out.append(
                (
                    "Few-shot CEM adaptation is the strongest strategy",
                    verdict,
                    "; ".join(
                        f"{k} against the best single expert ({v['best_expert']}), pooled: "
                        f"{100 * v['difference']:+.1f} points (p = {v['p_value']:.2g})"
                        for k, v in fs.items()
                    )
                    + ".",
                )
            )
        fps = [e["first_pass"] for t, e in a["tasks"].items() if "first_pass" in e]
        if fps:
            mean = {k: sum(f[f"{k}_fraction"] for f in fps) / len(fps) for k in ("prompt", "classifier", "probe")}
            out.append(
                (
                    "The first pass is cheap relative to the second",
                    "yes with the early-layer probe" if mean["probe"] <= 0.3 else "no",
                    "Mean first-pass / second-pass time over the tasks: "
                    + ", ".join(f"{k} {v:.0%}" for k, v in mean.items())
                    + ".",
                )
            )
    return out


def update_readme(lines: list[str], readme: Path = ROOT / "README.md") -> bool:
    """Replace the README's block between the headline markers with ``lines``."""
    start, end = "<!-- headline:start (bench/report.py) -->", "<!-- headline:end -->"
    if not readme.is_file():
        return False
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    from transformer_squared.fileio import write_text

    write_text(readme, head + start + "\n" + "\n".join(lines) + "\n" + end + tail)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"))
    args = ap.parse_args()
    missing: list[str] = []
    quality = quality_table(missing)
    experts = expert_table(missing)
    base_mc = mc_base_table(missing)
    trained, bars = trained_table(missing)
    adapt = adaptation_table(missing)
    versus = svf_vs_lora_table(missing)
    speed = speed_tables(missing)
    gpu = gpu_tables()
    heads = headlines()
    said = claims()
    if said:
        heads = heads + [
            "- The paper's claims at this scale (a difference counts when a paired McNemar test gives p < 0.05): "
            + "; ".join(f"{claim}: {verdict}" for claim, verdict, _ in said)
            + "."
        ]
    text = [
        "# Results",
        "",
        "Generated by `python bench/report.py` from `docs/results/*.json`; each table names the command that",
        "regenerates its numbers. Model: SmolLM2-135M-Instruct (the bundled default). Quality numbers come from",
        "2 CPU cores; GPU speed numbers, where shown, from the GPU named in their table.",
        "",
    ]
    if heads:
        text += ["## Headline figures", ""] + heads + [""]
    if said:
        text += [
            "## The paper's claims at this scale",
            "",
            "A difference counts only where the paired exact McNemar test on the same items (`t2 compare`) gives",
            "p < 0.05; the verdicts below are computed from the per-item results by `bench/report.py`, not",
            "written by hand.",
            "",
        ]
        text += [f"- **{claim}**: {verdict}. {detail}" for claim, verdict, detail in said] + [""]
    text += ["## Shipped experts against the base model (paired, whole test splits)", ""] + (
        experts or ["(not run yet)"]
    )
    text += [""] + (base_mc or []) + [""]
    text += (
        ["## SVF vs LoRA, SFT vs RL, on the training tasks (held-out parts)", ""]
        + (quality or ["(not run yet)"])
        + [""]
    )
    if versus:
        text += ["## SVF against LoRA under one protocol (ARC-Easy, paired)", ""] + versus + [""]
    text += ["## The shipped experts on their own tasks (longer runs, held-out test parts)", ""]
    text += trained + ["", "![held-out accuracy, base vs expert](results/quality.png)", ""] if trained else []
    text += [
        "## Self-adaptation on unseen tasks",
        "",
        "Every strategy against the base model on the same items (`python bench/adaptation_table.py`; the "
        "protocol is in its docstring and docs/adaptation.md).",
        "",
    ]
    text += (adapt or ["(not run yet)"]) + [""]
    if (RESULTS / "adaptation_table.png").is_file():
        text += ["![adaptation table](results/adaptation_table.png)", ""]
    text += ["## Speed and memory on this machine's CPU", ""] + speed_notes("") + [""] + speed
    if (RESULTS / "scaling.png").is_file():
        text += ["![step time and memory against width, sequence length and batch, CPU](results/scaling.png)", ""]
    if gpu:
        text += [
            "## Speed and memory on a GPU",
            "",
            "Taken with `sh bench/speed_suite.sh /tmp/smollm2-random docs/results/gpu cuda` on a GPU machine",
            "without network, on a random-weight copy of the default model's architecture",
            "(`python bench/random_model.py --like default --out /tmp/smollm2-random`): speed does not depend on",
            "the weights, and random weights never stop early, so every row generates its full length.",
            "Raw output: `results/gpu/speed_suite_log.txt` (first pass of the suite: its RL step hit the",
            "per-step time limit, and its generation numbers were timed plain-first and are superseded by the",
            "round-robin table below) and `results/gpu/train_step_log.txt` (the RL step table).",
            "",
        ]
        text += speed_notes("gpu") + [""] + gpu
        if (RESULTS / "gpu" / "scaling.png").is_file():
            text += [
                "![step time and memory against width, sequence length and batch, GPU](results/gpu/scaling.png)",
                "",
            ]
    if missing:
        text += ["## Not yet measured", ""] + [f"- {m}" for m in missing] + [""]
    from transformer_squared.fileio import write_text

    write_text(args.out, "\n".join(text) + "\n")
    if bars:
        plot(bars, RESULTS / "quality.png")
    readme = update_readme(heads)
    print(
        f"wrote {args.out}"
        + ("; README headline block updated" if readme else "")
        + (f"; missing: {', '.join(missing)}" if missing else "")
    )


if __name__ == "__main__":
    main()
