"""The demo: held-out questions from three domains, answered by the base model and self-adaptively.

Loads the default model and the shipped experts (``experts/{math,code,reasoning,commonsense}``,
the classification expert ``experts/classify`` and the early-layer router ``experts/router``),
takes a few held-out test questions from GSM8K, MBPP and ARC-Easy, and for each strategy
(base, ``prompt``, ``classifier``, ``probe``) routes every question, answers them in one mixed-expert
batch, checks the answers, and prints the routes, accuracy and the time of each pass.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import T2Error

DEMO_TASKS = ("gsm8k", "mbpp", "arc_easy")


def find_experts(folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    found = {p.name: p for p in sorted(folder.iterdir()) if (p / "expert.json").is_file()} if folder.is_dir() else {}
    return found


def run_demo(
    experts_dir: str | Path = "experts",
    per_task: int = 4,
    model_name: str = "default",
    max_new_tokens: int | None = 192,
    print_fn=print,
) -> dict:
    """Run the demo and return its numbers (also printed)."""
    from .adapt import AdaptiveModel, Route
    from .evaluation import evaluate
    from .experts import Expert
    from .models import load_model
    from .models import model_name as name_of
    from .svf import SVFModel
    from .tasks import get_task

    t_start = time.perf_counter()
    _say(print_fn, estimate(per_task, len(DEMO_TASKS)))
    found = find_experts(experts_dir)
    task_experts = [Expert.load(p) for name, p in found.items() if name != "classify"]
    if not task_experts:
        raise T2Error(f"no experts in {str(experts_dir)!r}; train them with `t2 train` (see docs/training.md)")
    classifier = Expert.load(found["classify"]) if "classify" in found else None
    router = None
    if (Path(experts_dir) / "router" / "router.json").is_file():
        from .probe import ProbeRouter

        router = ProbeRouter.load(Path(experts_dir) / "router")
    t0 = time.perf_counter()
    model, tok = load_model(model_name, progress=True)
    svf = SVFModel.from_expert(model, task_experts[0])
    print_fn(
        f"loaded {name_of(model, model_name)} and {len(task_experts)} experts "
        f"({', '.join(e.name for e in task_experts)}{', classifier' if classifier else ''}) "
        f"in {time.perf_counter() - t0:.1f}s; each expert is {task_experts[0].num_parameters():,} numbers"
    )
    items, owner = [], {}
    for name in DEMO_TASKS:
        task = get_task(name)
        for it in task.sample("test", per_task, "t2-demo"):
            items.append(it)
            owner[it.id] = task
    strategies = [("base", "none"), ("prompt", "prompt")] + ([("classifier", "classifier")] if classifier else [])
    strategies += [("probe", "probe")] if router is not None else []
    results: dict[str, dict] = {}
    done_s: list[float] = []
    for index, (label, strategy) in enumerate(strategies, 1):
        t_strategy = time.perf_counter()
        left = ""
        if done_s:
            per = sum(done_s) / len(done_s)
            left = f"; about {per * (len(strategies) - index + 1):.0f}s left at {per:.0f}s per strategy so far"
        _say(print_fn, f"\n[{index}/{len(strategies)}] {label}: answering {len(items)} questions{left}")
        am = AdaptiveModel(
            svf,
            tok,
            task_experts if strategy != "none" else [],
            strategy=strategy,
            classifier=classifier,
            router=router,
        )
        rows, first, second = [], 0.0, 0.0
        for name in DEMO_TASKS:
            task = get_task(name)
            batch = [it for it in items if owner[it.id].name == name]
            routes_for: dict[str, Route] = {}
            choose = am.chooser(record=routes_for)

            t_task = time.perf_counter()
            summary, rs = evaluate(
                model,
                tok,
                task,
                batch,
                batch_size=len(batch),
                max_new_tokens=min(max_new_tokens or task.max_new_tokens, task.max_new_tokens),
                svf=svf,
                choose_experts=choose,
                progress=False,
            )
            _say(print_fn, f"      {name}: {len(batch)} questions in {time.perf_counter() - t_task:.1f}s")
            first += summary.extra["first_pass_seconds"]
            second += summary.extra["second_pass_seconds"]
            for it, r in zip(batch, rs, strict=True):
                rows.append((name, it, routes_for[it.id], r))
        correct = sum(r["correct"] for *_, r in rows)
        results[label] = {"correct": correct, "n": len(rows), "first_pass_s": first, "second_pass_s": second}
        done_s.append(time.perf_counter() - t_strategy)
        print_fn(f"\n=== {label}: {correct}/{len(rows)} correct; first pass {first:.1f}s, second pass {second:.1f}s")
        for name, it, route, r in rows:
            q = it.question.replace("\n", " ")
            q = q[:70] + ("…" if len(q) > 70 else "")
            mark = "✓" if r["correct"] else "✗"
            print_fn(f"  {mark} [{name:8s} → {route.describe():24s}] {q}")
    print_fn("\nsummary (held-out test questions; see docs/tasks.md for how the splits were made):")
    for label, r in results.items():
        print_fn(
            f"  {label:10s} {r['correct']:2d}/{r['n']} correct   first pass {r['first_pass_s']:5.1f}s   "
            f"second pass {r['second_pass_s']:6.1f}s"
        )
    print_fn(f"\ntotal {time.perf_counter() - t_start:.0f}s")
    return results


# `make demo` (2 questions per task, 6 in all) on 2 CPU cores: about 4 minutes cold on idle cores (issue 16);
# `time t2 demo --per-task 2` with warm caches but other jobs on the cores (load 6): 5 min 25 s (2026-11-30).
# With the probe as a fourth strategy: `time make demo`, two other jobs on the cores: 3 min 31 s (2026-11-30).
# Most of it is generating GSM8K and MBPP answers of up to 256 tokens.
DEMO_S_PER_QUESTION = 35  # 211 s / 6 questions, four strategies


def estimate(per_task: int, tasks: int) -> str:
    """The line the demo starts with: what it does and roughly how long it takes here."""
    n = per_task * tasks
    minutes = max(1, round(DEMO_S_PER_QUESTION * n / 60))
    return (
        f"t2 demo: {n} held-out questions ({per_task} each from {tasks} tasks) answered by the base model, "
        f"--adapt prompt, --adapt classifier and --adapt probe; about {minutes} min on 2 idle CPU cores, more when other jobs "
        "share them. Each pass prints its time as it finishes."
    )


def _say(print_fn, text: str) -> None:
    if print_fn is print:
        print(text, flush=True)
    else:
        print_fn(text)
