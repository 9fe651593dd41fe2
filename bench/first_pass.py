"""Time of the first pass alone: prompt strategy, and the classifier through the factored vs merged path.

    python bench/first_pass.py --task arc_challenge --limit 150

Routes the same held-out requests three ways, side by side in one process, and checks that the two
classifier paths choose the same experts. Writes docs/results/first_pass.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="arc_challenge")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16, help="requests per route() call (the eval batch)")
    ap.add_argument("--experts", nargs="+", default=["experts/math", "experts/code", "experts/reasoning"])
    ap.add_argument("--classifier", default="experts/classify")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "first_pass.json"))
    args = ap.parse_args()

    import transformer_squared as t2
    from transformer_squared.adapt import AdaptiveModel
    from transformer_squared.fileio import write_json
    from transformer_squared.tasks import get_task

    model, tok = t2.load_model("default", progress=False)
    svf = t2.SVFModel(model)
    experts = [t2.Expert.load(ROOT / e) for e in args.experts]
    classifier = t2.Expert.load(ROOT / args.classifier)
    task = get_task(args.task)
    texts = [task.user_content(it) for it in task.load("test")[: args.limit]]
    configs = {
        "prompt": AdaptiveModel(svf, tok, experts, strategy="prompt"),
        "classifier_factored": AdaptiveModel(svf, tok, experts, strategy="classifier", classifier=classifier),
        "classifier_merged": AdaptiveModel(svf, tok, experts, strategy="classifier", classifier=classifier),
    }
    configs["classifier_factored"].merge_min_tokens = 10**12
    configs["classifier_merged"].merge_min_tokens = 0
    rows, picks = {}, {}
    for name, am in configs.items():
        am.route(texts[: args.batch])  # warm-up
        t0 = time.perf_counter()
        routes = []
        for s in range(0, len(texts), args.batch):
            routes += am.route(texts[s : s + args.batch])
        secs = time.perf_counter() - t0
        picks[name] = [r.label for r in routes]
        rows[name] = {"seconds": round(secs, 2), "ms_per_request": round(1000 * secs / len(texts), 1)}
        print(name, rows[name])
    prompt_tokens = sum(
        len(tok(p, add_special_tokens=False)["input_ids"]) for p in configs["prompt"]._classify_prompts(texts)
    )
    result = {
        "command": f"python bench/first_pass.py --task {args.task} --limit {args.limit} --batch {args.batch}",
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "requests": len(texts),
        "prompt_tokens": prompt_tokens,
        "rows": rows,
        "classifier_paths_agree": picks["classifier_factored"] == picks["classifier_merged"],
        "merged_over_factored": round(rows["classifier_merged"]["seconds"] / rows["classifier_factored"]["seconds"], 3),
    }
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
