"""Generation speed: plain model vs SVF merged vs SVF factored vs a mixed-expert batch, at several batch sizes.

    python bench/inference_speed.py [--batches 1 8 32] [--new-tokens 32]

All four run in one process on the same prompts (greedy, the same number of new tokens asked for);
tokens/s counts generated tokens. "plain" is the model before SVF wraps it; "merged" applies one
expert (W' cached); "factored" runs the same expert through the factored path; "mixed" gives the rows
three different experts in one batch. Writes docs/results/inference_speed.json.
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
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "inference_speed.json"))
    args = ap.parse_args()

    from common import chat_prompts, random_experts

    import transformer_squared as t2
    from transformer_squared.fileio import write_json
    from transformer_squared.generation import generate

    model, tok = t2.load_model(args.model, device=args.device, progress=False)
    prompts_all = chat_prompts(tok, max(args.batches))

    def timed(prompts, **kw) -> tuple[float, int]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=len(prompts), **kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t, sum(g.num_tokens for g in out)

    generate(model, tok, prompts_all[:2], max_new_tokens=4)  # warm-up
    plain = {b: timed(prompts_all[:b]) for b in args.batches}
    svf = t2.SVFModel(model)
    experts = random_experts(svf, 3)
    rows = []
    for b in args.batches:
        prompts = prompts_all[:b]
        res = {"plain": plain[b]}
        svf.apply(experts[0])
        timed(prompts[:1])  # builds and caches W'
        res["merged"] = timed(prompts)
        with svf.use_path("factored"):
            res["factored"] = timed(prompts)
        svf.reset()
        res["mixed"] = timed(prompts, svf=svf, experts=[experts[i % 3] for i in range(b)])
        row = {"batch": b}
        for name, (secs, tokens) in res.items():
            row[f"{name}_tokens_per_s"] = round(tokens / secs, 1)
        for name in ("merged", "factored", "mixed"):
            row[f"{name}_vs_plain"] = round(row[f"{name}_tokens_per_s"] / row["plain_tokens_per_s"], 2)
        rows.append(row)
        print(row)
    result = {"command": f"python bench/inference_speed.py --batches {' '.join(map(str, args.batches))} "
                         f"--new-tokens {args.new_tokens}",
              "device": args.device if args.device != "cpu" else f"cpu ({platform.machine()}, "
                                                                     f"{torch.get_num_threads()} threads)",
              "torch": torch.__version__, "rows": rows}
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
