"""Benchmark the SVF core on the default model: SVD and merge time, forward paths, memory.

    python bench/svf_core.py [--model default] [--tokens 256] [--repeats 5]

Prints a table and writes docs/results/svf_core.json. Memory is the peak RSS of a fresh
child process that loads the model (plain) vs loads and wraps it (SVF, MLP targets) and runs
the same forward, so the two numbers are comparable.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def rss_child(model: str, wrap: bool, tokens: int) -> tuple[float, float]:
    """(RSS after the forward, peak RSS) in MiB of a fresh process."""
    code = f"""
import resource, torch, transformer_squared as t2
m, tok = t2.load_model({model!r}, progress=False)
if {wrap}:
    svf = t2.SVFModel(m, targets="mlp")
    with torch.no_grad():
        for p in svf.parameters(): p.mul_(1.01)
ids = torch.randint(0, m.config.vocab_size, (1, {tokens}))
with torch.no_grad():
    m(ids)
import gc; gc.collect()
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")][0] / 1024
print(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    now, peak = out.stdout.strip().splitlines()[-1].split()
    return float(now), float(peak)


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "svf_core.json"))
    args = ap.parse_args()

    import transformer_squared as t2
    from transformer_squared.fileio import write_json
    from transformer_squared.svf import compute_svd

    model, tok = t2.load_model(args.model, progress=False)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens))
    with torch.no_grad():
        t_plain = timeit(lambda: model(ids), args.repeats)

    t = time.perf_counter()
    svf = t2.SVFModel(model, targets="mlp", cache=False)
    t_svd = time.perf_counter() - t
    svf.unwrap()
    t = time.perf_counter()
    svf = t2.SVFModel(model, targets="mlp", cache=True)
    t_cached = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)

    def merge_all():
        for layer in svf.layers.values():
            layer.clear_cache()
            layer._cached_merged_weight()

    t_merge = timeit(merge_all, args.repeats)
    with torch.no_grad():
        svf.path = "merged"
        merge_all()
        t_merged = timeit(lambda: model(ids), args.repeats)
        svf.path = "factored"
        t_factored = timeit(lambda: model(ids), args.repeats)

    def train_step(path):
        svf.path = path

        def step():
            for p in svf.parameters():
                p.grad = None
            model(ids).logits[:, -64:].float().logsumexp(-1).sum().backward()

        return step

    t_train_merged = timeit(train_step("merged"), max(2, args.repeats // 2))
    t_train_factored = timeit(train_step("factored"), max(2, args.repeats // 2))
    one = next(iter(svf.layers.values()))
    t_one_svd = timeit(lambda: compute_svd(one.base_weight()), 3)

    rss_plain, peak_plain = rss_child(args.model, False, args.tokens)
    rss_svf, peak_svf = rss_child(args.model, True, args.tokens)
    res = {
        "command": f"python bench/svf_core.py --model {args.model} --tokens {args.tokens} --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "matrices": len(svf.layers),
        "trainable_parameters": svf.num_trainable_parameters(),
        "svd_all_seconds": round(t_svd, 3),
        "wrap_with_cached_svd_seconds": round(t_cached, 3),
        "svd_one_matrix_seconds": round(t_one_svd, 4),
        "merge_all_seconds": round(t_merge, 4),
        "forward_seconds": {
            "plain": round(t_plain, 4),
            "svf_merged_cached": round(t_merged, 4),
            "svf_factored": round(t_factored, 4),
        },
        "forward_ratio_vs_plain": {"merged": round(t_merged / t_plain, 3), "factored": round(t_factored / t_plain, 3)},
        "train_step_seconds": {"merged": round(t_train_merged, 4), "factored": round(t_train_factored, 4)},
        "rss_after_forward_mib": {
            "plain": round(rss_plain, 1),
            "svf_mlp": round(rss_svf, 1),
            "ratio": round(rss_svf / rss_plain, 3),
        },
        "peak_rss_mib": {
            "plain": round(peak_plain, 1),
            "svf_mlp": round(peak_svf, 1),
            "note": "dominated by transformers' loading, identical for both",
        },
        "this_process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(res, indent=2))
    write_json(args.out, res)


if __name__ == "__main__":
    main()
