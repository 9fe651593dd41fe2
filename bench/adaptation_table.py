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
  channel), token-normalised: the first 500 items of the test splits of ARC-Challenge, OpenBookQA
  (all 500), SciQ and Winogrande (2,000 items pooled); none was used for training,
  for choosing hyperparameters or for building a router;
* the paper's other two tasks, generated (``--max-new-tokens 256``): all 164 HumanEval problems
  and the first 500 MATH test problems; both sit at the 135M model's floor, so they get the base
  model and each expert only (no mixture, no few-shot search). (Amended on 2026-11-30: the first
  run scored the first 50 of each, what one session's CPU allowed; the rows are extended to what
  the data allow, up to 500, by resuming the same per-item files, whatever the first 50 showed);
* configurations scored on every item: base, each expert, the uniform mixture (α = ½, ½), and
  for the multiple-choice tasks few-shot CEM mixtures (32 shots with the expected-accuracy
  fitness; the paper's 10 shots), shots drawn from the task's val/train split (SciQ has neither:
  its shots are test items, excluded from scoring, and its few-shot rows compare on the rest);
* routed strategies (prompt, classifier, probe) pick one configuration per item: their answer is
  that configuration's answer on that item (the second pass is deterministic, and
  tests/test_adapt.py checks that routing then scoring equals scoring with the chosen expert);
* oracle: the best single expert per task, chosen on the test items (an upper bound, not a method);
* statistics: each strategy against base with the exact McNemar test, per task and pooled over
  the four unseen multiple-choice tasks (HellaSwag was dropped mid-run, before any comparison
  was looked at: 5 of its configurations did not fit the CPU budget); the first pass's cost is
  timed against the second pass on the same items, in the same process; routing accuracy is
  measured on the first 400 requests of the classify test split (held-out requests of the four
  training tasks in a seeded order: 110 reasoning, 99 commonsense, 96 math, 95 code).

Writes docs/results/adaptation/ (per-item files), docs/results/adaptation_table.{json,md,png};
docs/adaptation.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
OUT = RESULTS / "adaptation"

PROTOCOL = {
    "experts": ["experts/reasoning", "experts/commonsense"],
    "classifier": "experts/classify",
    "router": "experts/router",
    "mc_tasks": {"arc_challenge": 500, "openbookqa": 500, "sciq": 500, "winogrande": 500},
    "gen_tasks": {"humaneval": None, "math": 500},  # None: the whole split (HumanEval has 164)
    "split": "test",
    "channel": "cloze",
    "norm": "token",
    "max_new_tokens": 256,
    "fewshot": {
        "fewshot32": {"shots": 32, "population": 8, "iterations": 3},
        "fewshot10": {"shots": 10, "population": 8, "iterations": 3},
    },
    "timing_items": 64,
    "routing_items": 400,
}
UNSEEN_MC = list(PROTOCOL["mc_tasks"])


def t2(*args: str, log: Path) -> None:
    from common import run_t2

    run_t2(*args, log=log, cwd=ROOT)


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


def all_tasks() -> list[str]:
    return [*PROTOCOL["mc_tasks"], *PROTOCOL["gen_tasks"]]


def stage_configs(log: Path, tasks: list[str]) -> None:
    # paths relative to the repository (t2 runs there), so a resumed file's run meta matches from any checkout
    experts = {Path(d).name: d for d in PROTOCOL["experts"]}
    for task in tasks:
        folder = OUT / task
        folder.mkdir(parents=True, exist_ok=True)
        runs: list[tuple[str, list[str]]] = [("base", [])]
        runs += [(name, ["--expert", d]) for name, d in experts.items()]
        if task in PROTOCOL["mc_tasks"]:
            runs += [("uniform", ["--expert", str(uniform_mixture().relative_to(ROOT))])]
            for name, f in PROTOCOL["fewshot"].items():
                runs.append(
                    (
                        name,
                        [
                            "--adapt",
                            "fewshot",
                            "--experts",
                            *experts.values(),
                            "--shots",
                            str(f["shots"]),
                            "--cem-population",
                            str(f["population"]),
                            "--cem-iterations",
                            str(f["iterations"]),
                            "--mixture-out",
                            str((OUT / "mixtures" / f"{task}-{name}").relative_to(ROOT)),
                        ],
                    )
                )
        limit = {**PROTOCOL["mc_tasks"], **PROTOCOL["gen_tasks"]}[task]
        for name, extra in runs:
            out = folder / f"{name}.json"
            if complete(out, limit):
                continue
            t = time.perf_counter()
            t2("eval", *task_args(task), *extra, "--out", str(out), log=log)
            print(f"{task} {name}: {time.perf_counter() - t:.0f}s", flush=True)


ROUTED = ("prompt", "classifier", "probe")


def complete(report: Path, limit: int | None) -> bool:
    """Whether a configuration's report covers the protocol's items, the first ``limit`` (None: the
    whole split). A report is written only when its run ends, so one made with a smaller limit is
    resumed by the same ``t2 eval --out``, which keeps the items already written."""
    if not report.is_file():
        return False
    made = json.loads(report.read_text()).get("limit")
    return made is None or (limit is not None and made >= limit)


def task_items(task_name: str) -> list:
    from transformer_squared.tasks import get_task

    p = PROTOCOL
    limit = p["mc_tasks"].get(task_name) if task_name in p["mc_tasks"] else p["gen_tasks"].get(task_name)
    items = get_task(task_name).load(p["split"])
    return items[:limit] if limit else items


def stage_routes(tasks: list[str], accuracy: bool = True, only: list[str] | None = None) -> None:
    """Every routed strategy's first pass on every item, its routing accuracy on held-out requests,
    and the first pass timed against the second on the same items, in this one process."""
    import torch

    import transformer_squared as t2x
    from transformer_squared.adapt import AdaptiveModel
    from transformer_squared.evaluation import evaluate, evaluate_loglik
    from transformer_squared.fileio import write_json
    from transformer_squared.probe import ProbeRouter
    from transformer_squared.tasks import get_task

    torch.set_num_threads(1)
    model, tok = t2x.load_model("default", progress=False)
    svf = t2x.SVFModel(model)
    experts = [t2x.Expert.load(ROOT / d) for d in PROTOCOL["experts"]]
    strategies = {
        "prompt": AdaptiveModel(svf, tok, experts, strategy="prompt"),
        "classifier": AdaptiveModel(
            svf, tok, experts, strategy="classifier", classifier=t2x.Expert.load(ROOT / PROTOCOL["classifier"])
        ),
        "probe": AdaptiveModel(svf, tok, experts, strategy="probe", router=ProbeRouter.load(ROOT / PROTOCOL["router"])),
    }
    if only:
        strategies = {k: v for k, v in strategies.items() if k in only}

    def route_all(am: AdaptiveModel, texts: list[str]) -> tuple[list, float]:
        t = time.perf_counter()
        routes = []
        for s in range(0, len(texts), 16):
            routes += am.route(texts[s : s + 16])
        return routes, time.perf_counter() - t

    # routing accuracy on the held-out requests of the training tasks (the classify test split)
    acc_file = OUT / "routing_accuracy.json"
    if accuracy and not acc_file.is_file():
        held = get_task("classify").load("test")[: PROTOCOL["routing_items"]]  # seeded order: labels mixed
        acc = {}
        for name, am in strategies.items():
            routes, secs = route_all(am, [it.question for it in held])
            acc[name] = {
                "accuracy": sum(r.label == it.answer for r, it in zip(routes, held, strict=True)) / len(held),
                "n": len(held),
                "seconds": round(secs, 2),
            }
            print(f"routing accuracy {name}: {acc[name]['accuracy']:.1%}", flush=True)
        write_json(acc_file, acc)
    for task_name in tasks:
        task = get_task(task_name)
        items = task_items(task_name)
        folder = OUT / task_name
        timing_file = folder / "first_pass_timing.json"
        for name, am in strategies.items():
            path = folder / f"routes-{name}.jsonl"
            if path.is_file() and len(path.read_text().splitlines()) == len(items):
                continue
            routes, secs = route_all(am, [it.question for it in items])
            path.write_text(
                "".join(
                    json.dumps(
                        {"id": str(it.id), "label": r.label, "expert": None if r.expert is None else r.expert.name}
                    )
                    + "\n"
                    for it, r in zip(items, routes, strict=True)
                )
            )
            print(f"{task_name} {name}: routed {len(items)} in {secs:.0f}s", flush=True)
        if timing_file.is_file() or len(strategies) < len(ROUTED):  # timing needs every first pass
            continue
        sample = items[: PROTOCOL["timing_items"] if task_name in PROTOCOL["mc_tasks"] else 16]
        timing = {"items": len(sample)}
        for _round in range(2):  # the first round warms caches up; the second is kept
            t = time.perf_counter()
            if task_name in PROTOCOL["mc_tasks"]:
                evaluate_loglik(
                    model, tok, task, sample, channel=PROTOCOL["channel"], norm=PROTOCOL["norm"], progress=False
                )
            else:
                evaluate(model, tok, task, sample, max_new_tokens=PROTOCOL["max_new_tokens"], progress=False)
            timing["second_pass_s"] = round(time.perf_counter() - t, 3)
            for name, am in strategies.items():
                _, secs = route_all(am, [it.question for it in sample])
                timing[f"{name}_s"] = round(secs, 3)
            if task_name not in PROTOCOL["mc_tasks"]:
                break  # generation is long enough that one round is a fair measure
        for name in strategies:
            timing[f"{name}_fraction"] = round(timing[f"{name}_s"] / timing["second_pass_s"], 4)
        write_json(timing_file, timing)
        print(f"{task_name} timing: {timing}", flush=True)


def outcomes(path: Path, ids: set[str] | None = None) -> dict[str, bool]:
    """Per-item correctness of a report, restricted to the protocol's items (a report may hold more)."""
    from transformer_squared.stats import read_report

    report, got = read_report(path)
    if ids is None:
        return got
    missing = ids - set(got)
    # a task without a train or val split (SciQ) draws its few-shot examples from test: the report
    # scored the other items, and its comparisons are made on those
    missing -= {str(s) for s in report.get("shots") or []}
    if missing:
        raise SystemExit(f"{path} lacks {len(missing)} of the protocol's items (e.g. {sorted(missing)[0]})")
    return {i: got[i] for i in ids if i in got}


def _on(a: dict[str, bool], b: dict[str, bool]) -> dict[str, bool]:
    """``a`` on the items of ``b`` (a few-shot row may lack its shots)."""
    return {i: a[i] for i in b}


def stage_table() -> None:
    from transformer_squared.fileio import write_json, write_text
    from transformer_squared.stats import compare_outcomes, pooled

    configs = ["base", *[Path(d).name for d in PROTOCOL["experts"]], "uniform", *PROTOCOL["fewshot"]]
    expert_names = [Path(d).name for d in PROTOCOL["experts"]]
    table: dict = {"protocol": PROTOCOL, "tasks": {}, "pooled": {}}
    per_strategy: dict[str, list] = {}
    for task_name in [*PROTOCOL["mc_tasks"], *PROTOCOL["gen_tasks"]]:
        folder = OUT / task_name
        ids = {str(it.id) for it in task_items(task_name)}
        have = {c: outcomes(folder / f"{c}.json", ids) for c in configs if (folder / f"{c}.json").is_file()}
        if "base" not in have:
            continue
        rows = {c: o for c, o in have.items()}
        for name in ROUTED:
            path = folder / f"routes-{name}.jsonl"
            if path.is_file():
                picks = {r["id"]: r["expert"] or "base" for r in map(json.loads, path.read_text().splitlines())}
                if all(picks[i] in have for i in ids):  # every chosen configuration was scored
                    rows[name] = {i: have[picks[i]][i] for i in ids}
        best = None
        if all(e in have for e in expert_names):
            best = max(expert_names, key=lambda e: sum(have[e].values()))
            rows["oracle"] = have[best]
        entry = {"n": len(have["base"]), "strategies": {}}
        for name, o in rows.items():
            c = compare_outcomes(_on(have["base"], o), o, "base", name)
            entry["strategies"][name] = c.to_dict()
            if task_name in UNSEEN_MC:
                per_strategy.setdefault(name, []).append((task_name, c))
        if best is not None:
            entry["oracle_expert"] = best
        for name in ROUTED:
            path = folder / f"routes-{name}.jsonl"
            if path.is_file():
                counts: dict[str, int] = {}
                for r in map(json.loads, path.read_text().splitlines()):
                    counts[r["expert"] or "base"] = counts.get(r["expert"] or "base", 0) + 1
                entry.setdefault("routed", {})[name] = counts
        timing = folder / "first_pass_timing.json"
        if timing.is_file():
            entry["first_pass"] = json.loads(timing.read_text())
        table["tasks"][task_name] = entry
    for name, comps in per_strategy.items():
        table["pooled"][name] = {**pooled([c for _, c in comps]).to_dict(), "tasks": [t for t, _ in comps]}
    # few-shot CEM against the best single expert, pooled (same items)
    for fs in PROTOCOL["fewshot"]:
        pairs = []
        for task_name in UNSEEN_MC:
            folder = OUT / task_name
            ids = {str(it.id) for it in task_items(task_name)}
            files = [folder / f"{c}.json" for c in (fs, *expert_names)]
            if all(f.is_file() for f in files):
                pairs.append((outcomes(files[0], ids), [outcomes(f, ids) for f in files[1:]]))
        if len(pairs) == len(UNSEEN_MC):
            best = max(range(len(expert_names)), key=lambda k: sum(sum(p[1][k].values()) for p in pairs))
            comp = pooled([compare_outcomes(_on(p[1][best], p[0]), p[0]) for p in pairs])
            table.setdefault("fewshot_vs_best_expert", {})[fs] = {"best_expert": expert_names[best], **comp.to_dict()}
    acc = OUT / "routing_accuracy.json"
    if acc.is_file():
        table["routing_accuracy"] = json.loads(acc.read_text())
    out = RESULTS / "adaptation_table.json"
    write_json(out, table)
    write_text(out.with_suffix(".md"), render(table))
    plot(table, out.with_suffix(".png"))
    doc = ROOT / "docs" / "adaptation.md"
    start, end = "<!-- adaptation table: start (python bench/adaptation_table.py) -->", "<!-- adaptation table: end -->"
    text = doc.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        write_text(doc, head + start + "\n" + render(table) + end + rest.split(end, 1)[1])
    print(render(table))


def _cell(c: dict) -> str:
    lo, hi = c["ci95"]
    star = "**" if c["p_value"] < 0.05 else ""
    return (
        f"{100 * c['accuracy_b']:.1f} ({star}{100 * c['difference']:+.1f}{star} [{100 * lo:+.1f}, {100 * hi:+.1f}], "
        f"p={c['p_value']:.2g})"
    )


def render(table: dict) -> str:
    names = [
        "base",
        "reasoning",
        "commonsense",
        "uniform",
        "prompt",
        "classifier",
        "probe",
        "fewshot32",
        "fewshot10",
        "oracle",
    ]
    lines = [
        "Each cell: accuracy % (difference from base in points [paired 95% CI], exact McNemar p); bold: p < 0.05.",
        "",
        "| task | n | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for task_name, e in table["tasks"].items():
        st = e["strategies"]
        cells = []
        for n in names:
            if n not in st:
                cells.append("—")
            elif n == "base":
                cells.append(f"{100 * st[n]['accuracy_a']:.1f}")
            else:
                cells.append(_cell(st[n]) + (f" n={st[n]['n']}" if st[n]["n"] != e["n"] else ""))
        lines.append(f"| {task_name} | {e['n']} | " + " | ".join(cells) + " |")
    if table["pooled"]:
        cells = []
        for n in names:
            c = table["pooled"].get(n)
            n_all = table["pooled"]["base"]["n"] if "base" in table["pooled"] else None
            note = f" n={c['n']}" if c is not None and n_all and c["n"] != n_all else ""
            if c is not None and len(c.get("tasks", UNSEEN_MC)) < len(UNSEEN_MC):
                note += " (over " + ", ".join(c["tasks"]) + " only)"
            cells.append("—" if c is None else (f"{100 * c['accuracy_a']:.1f}" if n == "base" else _cell(c) + note))
        n_pool = next(iter(table["pooled"].values()))["n"]
        lines.append(f"| **pooled, {len(UNSEEN_MC)} unseen MC tasks** | {n_pool} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Smallest pooled difference each test could see (80% power, α = 0.05): "
            + ", ".join(f"{k} ±{100 * c['detectable']:.1f}" for k, c in table["pooled"].items() if k != "base"),
        ]
    for fs, c in table.get("fewshot_vs_best_expert", {}).items():
        lines.append(
            f"\n{fs} against the best single expert ({c['best_expert']}), pooled: "
            f"{100 * c['difference']:+.1f} points [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}], "
            f"won {c['won']}, lost {c['lost']}, p = {c['p_value']:.2g}"
        )
    if "routing_accuracy" in table:
        lines += [
            "",
            "Routing accuracy on held-out requests of the training tasks (classify test split, "
            f"{next(iter(table['routing_accuracy'].values()))['n']} requests): "
            + ", ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in table["routing_accuracy"].items()),
        ]
    lines += [
        "",
        "| task | routed by prompt | routed by classifier | routed by probe | first pass / second pass "
        "(prompt, classifier, probe) |",
        "|---|---|---|---|---|",
    ]
    for task_name, e in table["tasks"].items():
        r = e.get("routed", {})
        fp = e.get("first_pass")
        frac = (
            (
                f"{100 * fp['prompt_fraction']:.0f}%, {100 * fp['classifier_fraction']:.0f}%, "
                f"{100 * fp['probe_fraction']:.0f}% ({fp['items']} items)"
            )
            if fp
            else "—"
        )
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items())) if d else "—"  # noqa: E731
        lines.append(
            f"| {task_name} | {fmt(r.get('prompt'))} | {fmt(r.get('classifier'))} | {fmt(r.get('probe'))} | {frac} |"
        )
    fps = [e["first_pass"] for t, e in table["tasks"].items() if t in UNSEEN_MC and "first_pass" in e]
    if len(fps) == len(UNSEEN_MC):
        lines.append(
            "| **mean over the unseen MC tasks** | | | | "
            + ", ".join(f"{100 * sum(f[f'{k}_fraction'] for f in fps) / len(fps):.0f}%" for k in ROUTED)
            + " |"
        )
    lines += ["", "Command: `python bench/adaptation_table.py` (protocol in its docstring)."]
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    """Difference from base with its paired 95% CI, per strategy, per unseen task and pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer_squared.fileio import atomic_path

    panels = {t: e["strategies"] for t, e in table["tasks"].items()}
    if table["pooled"]:
        panels[f"pooled ({len(UNSEEN_MC)} unseen MC)"] = table["pooled"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, (title, st) in zip(axes[0], panels.items(), strict=True):
        names = [n for n in st if n != "base"]
        d = [100 * st[n]["difference"] for n in names]
        err = [
            [100 * (st[n]["difference"] - st[n]["ci95"][0]) for n in names],
            [100 * (st[n]["ci95"][1] - st[n]["difference"]) for n in names],
        ]
        colors = ["#4C72B0" if st[n]["p_value"] < 0.05 else "#AAAAAA" for n in names]
        ax.bar(range(len(names)), d, yerr=err, capsize=2, color=colors)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylabel("points vs base (blue: p < 0.05)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=["configs", "routes", "table", "all"], default="all")
    ap.add_argument("--tasks", nargs="*", default=None, help="only these tasks (configs/routes; to run in parallel)")
    ap.add_argument("--strategies", nargs="*", default=None, choices=ROUTED, help="routes: only these first passes")
    ap.add_argument(
        "--no-routing-accuracy",
        action="store_true",
        help="routes: skip the held-out routing accuracy (another process)",
    )
    args = ap.parse_args()
    tasks = args.tasks or all_tasks()
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "log.txt"
    if args.stage in ("configs", "all"):
        stage_configs(log, tasks)
    if args.stage in ("routes", "all"):
        stage_routes(tasks, accuracy=not args.no_routing_accuracy, only=args.strategies)
    if args.stage in ("table", "all"):
        stage_table()


if __name__ == "__main__":
    main()
