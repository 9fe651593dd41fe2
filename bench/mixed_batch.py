"""Mixed-expert batches: one generation with per-row experts vs one generation per expert group.

    python bench/mixed_batch.py [--batch 12] [--new-tokens 48]

For batches whose rows need 1, 2 or 3 distinct experts, times (a) a single batched
generation where each row carries its own z (factored path) and (b) generating each group
alone with its expert merged, and prints tokens/s for both. Writes docs/results/mixed_batch.json.
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
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "mixed_batch.json"))
    args = ap.parse_args()

    from common import chat_prompts, random_experts

    import transformer_squared as t2
    from transformer_squared.fileio import write_json
    from transformer_squared.generation import generate

    model, tok = t2.load_model(args.model, progress=False)
    svf = t2.SVFModel(model)
    experts = random_experts(svf, 3)
    prompts = chat_prompts(tok, args.batch)
    kw = dict(max_new_tokens=args.new_tokens, batch_size=args.batch)
    generate(model, tok, prompts[:2], max_new_tokens=4)  # warm-up
    rows = []
    for k in (1, 2, 3):
        assign = [experts[i % k] for i in range(args.batch)]
        t = time.perf_counter()
        mixed = generate(model, tok, prompts, svf=svf, experts=assign, **kw)
        t_mixed = time.perf_counter() - t
        t = time.perf_counter()
        grouped_tokens = 0
        for e in experts[:k]:
            idx = [i for i, a in enumerate(assign) if a is e]
            svf.apply(e)
            grouped_tokens += sum(x.num_tokens for x in generate(model, tok, [prompts[i] for i in idx], **kw))
        svf.reset()
        t_grouped = time.perf_counter() - t
        tokens = sum(x.num_tokens for x in mixed)
        rows.append(
            {
                "distinct_experts": k,
                "mixed_seconds": round(t_mixed, 2),
                "grouped_seconds": round(t_grouped, 2),
                "mixed_tokens_per_s": round(tokens / t_mixed, 1),
                "grouped_tokens_per_s": round(grouped_tokens / t_grouped, 1),
                "speedup_mixed_over_grouped": round(t_grouped / t_mixed, 2),
            }
        )
        print(rows[-1])
    res = {
        "command": f"python bench/mixed_batch.py --batch {args.batch} --new-tokens {args.new_tokens}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "rows": rows,
    }
    write_json(args.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
