"""Generation speed: plain model vs SVF merged vs SVF factored vs a mixed-expert batch, at several batch sizes.

    python bench/inference_speed.py [--batches 1 8 32] [--new-tokens 32]

All four run in one process on the same prompts (greedy, the same number of new tokens asked for),
round-robin: each round times plain, merged, factored and mixed one after another (the first round
is a warm-up), and each variant's tokens/s is the median over the rounds. tokens/s counts generated
tokens. "plain" is the base weights (``svf.disabled()``: the original layers' own forward);
"merged" applies one expert (W' cached); "factored" runs the same expert through the factored path;
"mixed" gives the rows three different experts in one batch. Writes docs/results/inference_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds (median), after one warm-up round")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 weights")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "inference_speed.json"))
    args = ap.parse_args()

    from common import chat_prompts, device_name, random_experts

    import transformer_squared as t2
    from transformer_squared.fileio import write_json
    from transformer_squared.generation import generate

    model, tok = t2.load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
    # model FLOPs per generated token: 2 per weight of every Linear (lm_head included; attention
    # scores, norms and sampling left out), to compare with the measured matmul ceiling
    flops_per_token = 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    prompts_all = chat_prompts(tok, max(args.batches))

    def timed(prompts, **kw) -> tuple[float, int]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=len(prompts), **kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t, sum(g.num_tokens for g in out)

    svf = t2.SVFModel(model)
    experts = random_experts(svf, 3)
    rows = []
    for b in args.batches:
        prompts = prompts_all[:b]
        mixed = [experts[i % 3] for i in range(b)]
        times: dict[str, list[float]] = {k: [] for k in ("plain", "merged", "factored", "mixed")}
        tokens: dict[str, int] = {}
        # round-robin: every round times the four variants one after another, so clock ramps and
        # machine load touch them alike; round 0 is a warm-up and is not counted
        for round_ in range(args.repeats + 1):
            svf.apply(experts[0])
            generate(model, tok, prompts[:1], max_new_tokens=1)  # builds and caches W' (untimed)
            with svf.disabled():
                res = {"plain": timed(prompts)}
            res["merged"] = timed(prompts)
            with svf.use_path("factored"):
                res["factored"] = timed(prompts)
            svf.reset()
            res["mixed"] = timed(prompts, svf=svf, experts=mixed)
            if round_:
                for name, (secs, n) in res.items():
                    times[name].append(secs)
                    tokens[name] = n
        row = {"batch": b}
        for name, secs in times.items():
            row[f"{name}_tokens_per_s"] = round(tokens[name] / statistics.median(secs), 1)
        for name in ("merged", "factored", "mixed"):
            row[f"{name}_vs_plain"] = round(row[f"{name}_tokens_per_s"] / row["plain_tokens_per_s"], 2)
        rows.append(row)
        print(row, flush=True)
    extra = "".join(
        f" --{k} {v}"
        for k, v in (("model", args.model), ("device", args.device), ("dtype", args.dtype))
        if v not in ("default", "cpu", "float32")
    )
    result = {
        "command": f"python bench/inference_speed.py --batches {' '.join(map(str, args.batches))} "
        f"--new-tokens {args.new_tokens} --repeats {args.repeats}{extra}",
        "device": args.device
        if args.device != "cpu"
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "device_name": device_name(args.device),
        "dtype": args.dtype,
        "flops_per_token": flops_per_token,
        "torch": torch.__version__,
        "rows": rows,
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
