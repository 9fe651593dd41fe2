"""The adaptation table: base / each expert / prompt / classifier / fewshot / oracle on unseen tasks.

    python bench/adaptation_table.py --experts experts/math experts/code experts/reasoning \
        --classifier experts/classify --tasks arc_challenge humaneval math --limit 60

Every configuration is scored on the same held-out items (the few-shot examples are removed
from all of them), with 95% Wilson intervals and the first- and second-pass times. Writes
docs/results/adaptation_table.json and the markdown table docs/results/adaptation_table.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--experts", nargs="+", required=True)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--tasks", nargs="+", default=["arc_challenge", "humaneval", "math"])
    ap.add_argument("--limit", type=int, default=60, help="items per task (after removing the shots)")
    ap.add_argument("--limits", nargs="*", default=[], metavar="TASK=N",
                    help="per-task item counts overriding --limit (cheap tasks can afford more)")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--cem-population", type=int, default=32)
    ap.add_argument("--cem-iterations", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="cap every task's generation length (a task's own shorter limit is kept)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "adaptation_table.json"))
    args = ap.parse_args()

    import transformer_squared as t2
    from transformer_squared.adapt import TASK_DOMAINS, AdaptiveModel, CEMConfig, cem_search
    from transformer_squared.cli.eval import _pick_shots
    from transformer_squared.evaluation import evaluate
    from transformer_squared.fileio import write_json, write_text
    from transformer_squared.tasks import get_task

    out = Path(args.out)
    per_task = {}
    for spec in args.limits:
        name, _, n = spec.partition("=")
        per_task[name] = int(n)
    cmd = "python bench/adaptation_table.py " + " ".join(
        [f"--experts {' '.join(args.experts)}"] + ([f"--classifier {args.classifier}"] if args.classifier else []) +
        [f"--tasks {' '.join(args.tasks)}", f"--limit {args.limit}", f"--shots {args.shots}",
         f"--cem-population {args.cem_population}", f"--cem-iterations {args.cem_iterations}"] +
        ([f"--limits {' '.join(args.limits)}"] if args.limits else []) +
        ([f"--max-new-tokens {args.max_new_tokens}"] if args.max_new_tokens else []))
    previous = json.loads(out.read_text()) if out.is_file() else {}
    # rows of an interrupted run of the same command are kept; the rest are (re)computed
    results: list[dict] = previous.get("rows", []) if previous.get("command") == cmd else []
    done = {(r["task"], r["config"]) for r in results}

    def save() -> None:
        write_json(out, {"command": cmd, "machine": f"{platform.machine()}, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads", "rows": results})

    model, tok = t2.load_model(args.model, progress=False)
    svf = t2.SVFModel(model)
    experts = [t2.Expert.load(d) for d in args.experts]
    classifier = t2.Expert.load(args.classifier) if args.classifier else None
    for task_name in args.tasks:
        task = get_task(task_name)
        shots = _pick_shots(task, args.shots, [])
        shot_ids = {s.id for s in shots}
        limit = per_task.get(task_name, args.limit)
        items = [it for it in task.load("test") if it.id not in shot_ids][:limit]
        max_new = min(task.max_new_tokens, args.max_new_tokens) if args.max_new_tokens else None
        mixture_dir = out.parent / "adaptation_mixtures" / task_name
        fewshot_row = next((r for r in results if r["task"] == task_name and r["config"] == "fewshot"), None)
        if (mixture_dir / "expert.json").is_file() and fewshot_row is not None:
            mixture, search_s = t2.Expert.load(mixture_dir), fewshot_row["search_s"]
        else:
            t = time.perf_counter()
            mixture, _ = cem_search(svf, tok, task, experts, shots,
                                    CEMConfig(population=args.cem_population, iterations=args.cem_iterations,
                                              max_new_tokens=max_new, batch_size=args.batch_size))
            search_s = time.perf_counter() - t
            mixture.save(mixture_dir)
        configs: list[tuple[str, AdaptiveModel | t2.Expert | None]] = [("base", None)]
        configs += [(f"expert:{e.name}", e) for e in experts]
        configs += [("prompt", AdaptiveModel(svf, tok, experts, strategy="prompt"))]
        if classifier is not None:
            configs += [("classifier", AdaptiveModel(svf, tok, experts, strategy="classifier", classifier=classifier))]
        configs += [("fewshot", AdaptiveModel(svf, tok, experts, strategy="fewshot", mixture=mixture)),
                    ("oracle", AdaptiveModel(svf, tok, experts, strategy="oracle"))]
        for label, how in configs:
            if (task_name, label) in done:
                continue
            if label == "oracle":  # the oracle picks one expert for the whole task: reuse its row
                pick = how.route([task.user_content(items[0])], domains=[TASK_DOMAINS.get(task.name)])[0].expert
                twin = next((r for r in results if r["task"] == task_name and pick is not None
                             and r["config"] == f"expert:{pick.name}"), None)
                if twin is not None:
                    row = dict(twin, config="oracle", same_as=twin["config"])
                    results.append(row)
                    save()
                    print(json.dumps(row))
                    continue
            if isinstance(how, AdaptiveModel):
                def choose(batch, am=how, task=task):
                    texts = [task.user_content(it) for it in batch]
                    return [r.expert for r in am.route(texts, domains=[TASK_DOMAINS.get(task.name)] * len(batch))]
            else:
                def choose(batch, e=how):
                    return [e] * len(batch)
            summary, rows = evaluate(model, tok, task, items, batch_size=args.batch_size,
                                     max_new_tokens=max_new, svf=svf, choose_experts=choose,
                                     desc=f"{task_name} [{label}]")
            routed: dict[str, int] = {}
            for r in rows:
                routed[r.get("expert") or "base"] = routed.get(r.get("expert") or "base", 0) + 1
            row = {"task": task_name, "config": label, "n": summary.n, "accuracy": summary.accuracy,
                   "ci95": list(summary.ci95), "first_pass_s": summary.extra["first_pass_seconds"],
                   "second_pass_s": summary.extra["second_pass_seconds"], "routed": routed}
            if label == "fewshot":
                row["search_s"] = round(search_s, 1)
                row["mixture"] = mixture.meta.get("mixture")
            results.append(row)
            save()
            print(json.dumps(row))
    save()
    lines = [f"Command: `{cmd}`", "", "| task | config | accuracy | 95% CI | n | first pass s | second pass s | routed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['task']} | {r['config']} | {r['accuracy']:.1%} | [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] | "
                     f"{r['n']} | {r['first_pass_s']:.1f} | {r['second_pass_s']:.1f} | "
                     f"{', '.join(f'{k}: {v}' for k, v in r['routed'].items())} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy with 95% intervals, one panel per task."""
    from charts import accuracy_panels

    panels: dict[str, list] = {}
    for r in rows:
        title = f"{r['task']} (n={r['n']})"
        panels.setdefault(title, []).append((r["config"].replace("expert:", ""), r["accuracy"], r["ci95"]))
    accuracy_panels(panels, path)


if __name__ == "__main__":
    main()
