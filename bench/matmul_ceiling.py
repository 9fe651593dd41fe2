"""The machine's own ceiling: measured matrix-multiply GFLOP/s in float32 and bfloat16.

    python bench/matmul_ceiling.py [--device cpu|cuda] [--sizes 256 512 1024 2048]

Square products C = A·B (2·n³ flops each) at growing n, plus the shapes the default model's
linear layers see (tokens × 576 by 576 × 1536 and 1536 × 576, the SmolLM2-135M MLP), each the best
of ``--repeats`` timed runs after a warm-up. The ceiling of a dtype is its best square result;
docs/RESULTS.md divides each measured path's model FLOP/s by it. Writes
docs/results/matmul_ceiling.json (one entry per device, so CPU and GPU results sit side by side).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import device_name

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def gflops(m: int, k: int, n: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    """Best GFLOP/s of an (m×k)·(k×n) product over ``repeats`` timed runs."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    b = torch.randn(k, n, generator=g).to(device, dtype)
    cuda = device.startswith("cuda")
    inner = 1
    for _ in range(2):  # warm-up; then pick how many products make one timed run last ≥ ~50 ms
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        inner = max(1, min(1000, int(0.05 / max(time.perf_counter() - t, 1e-6) * inner)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="square sizes (default: 256..2048 on CPU, 1024..8192 on CUDA)",
    )
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2048], help="rows of the model-shaped products")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "matmul_ceiling.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    sizes = args.sizes or ([1024, 2048, 4096, 8192] if cuda else [256, 512, 1024, 2048])
    name = device_name(args.device)
    print(f"device: {args.device} ({name})")
    entry: dict = {
        "device": args.device,
        "device_name": name,
        "torch": torch.__version__,
        "command": "python bench/matmul_ceiling.py --device " + args.device,
        "square": [],
        "model_shapes": [],
        "ceiling_gflops": {},
    }
    for dname, dtype in DTYPES.items():
        for n in sizes:
            r = round(gflops(n, n, n, dtype, args.device, args.repeats), 1)
            entry["square"].append({"dtype": dname, "n": n, "gflops": r})
            print(f"{dname:9} square n={n:5}: {r:10.1f} GFLOP/s", flush=True)
        for t in args.tokens:
            for k, n in ((576, 1536), (1536, 576)):
                r = round(gflops(t, k, n, dtype, args.device, args.repeats), 1)
                entry["model_shapes"].append({"dtype": dname, "m": t, "k": k, "n": n, "gflops": r})
                print(f"{dname:9} {t}x{k} @ {k}x{n}: {r:10.1f} GFLOP/s", flush=True)
        entry["ceiling_gflops"][dname] = max(s["gflops"] for s in entry["square"] if s["dtype"] == dname)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {"devices": {}}
    data["devices"]["cuda" if cuda else "cpu"] = entry
    from transformer_squared.fileio import write_json

    write_json(out, data)
    print(f"ceiling: {entry['ceiling_gflops']} GFLOP/s; wrote {out}")


if __name__ == "__main__":
    main()
