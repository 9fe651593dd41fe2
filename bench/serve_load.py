"""Load figures for `t2 serve`: requests/s and latency percentiles, written to docs/results/serve_load.json.

Starts a real server (subprocess, 127.0.0.1), then runs three phases over HTTP:

1. sequential: one request at a time (the latency of a lone request);
2. concurrent: ``--requests`` chat requests from ``--concurrency`` client threads, a mix of
   pinned experts, the server's routing strategy and the base weights (batched together);
3. burst: ``--burst`` requests at once against a ``--queue-size`` queue (how many get 429,
   how fast every one is answered, whether the server is still healthy after).

    python bench/serve_load.py                      # the bundled default model, 2 random experts
    python bench/serve_load.py --model path/to/model --experts experts/math experts/code

Without ``--experts`` it makes random experts (z = 1 + N(0, 0.05²)) so that batches mix experts;
their answers are meaningless, their cost is the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = (
    "import sys\nfrom transformer_squared import cli\n"
    "'serve' in cli.COMMAND_MODULES or cli.COMMAND_MODULES.append('serve')\nsys.exit(cli.main())"
)
QUESTIONS = [
    "What is 17 times 23? Answer with the number.",
    "Write a Python function that reverses a string.",
    "Which is heavier, a kilogram of iron or a kilogram of feathers?",
    "A train travels 60 km in 45 minutes. What is its speed in km/h?",
    "Write a Python one-liner that sums the even numbers in a list.",
    "Why does ice float on water?",
]


def _post(url: str, body: dict, timeout: float = 600) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def make_random_experts(model: str, folder: Path, count: int) -> list[Path]:
    """Random experts on ``model`` (tasks gsm8k / mbpp / arc_easy, so the router knows their domains)."""
    import torch

    from transformer_squared import SVFModel, load_model

    m, _ = load_model(model, progress=False)
    svf = SVFModel(m)
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, task in enumerate(["gsm8k", "mbpp", "arc_easy"][:count]):
        svf.reset()
        with torch.no_grad():
            for p in svf.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        path = folder / f"random-{task}"
        svf.to_expert(f"random-{task}", task=task).save(path)
        out.append(path)
        print(f"made expert {path.name} ({i + 1}/{count})", flush=True)
    return out


def run_phase(base: str, bodies: list[dict], concurrency: int) -> dict:
    """Send ``bodies`` from ``concurrency`` threads; status counts, latency percentiles, throughput."""

    def one(body: dict) -> tuple[int, float, int, str | None]:
        t = time.perf_counter()
        code, data = _post(base + "/v1/chat/completions", body)
        took = time.perf_counter() - t
        tokens = data.get("usage", {}).get("completion_tokens", 0) if code == 200 else 0
        expert = data.get("t2", {}).get("expert") if code == 200 else None
        return code, took, tokens, expert

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    lat = [r[1] for r in ok]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r[0])] = statuses.get(str(r[0]), 0) + 1
    experts: dict[str, int] = {}
    for r in ok:
        experts[r[3] or "base"] = experts.get(r[3] or "base", 0) + 1
    return {
        "requests": len(bodies),
        "concurrency": concurrency,
        "statuses": statuses,
        "answered_by": experts,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "completion_tokens_per_s": round(sum(r[2] for r in ok) / wall, 1),
        "latency_s": {
            "p50": round(_percentile(lat, 0.5), 3),
            "p95": round(_percentile(lat, 0.95), 3),
            "max": round(max(lat), 3) if lat else None,
            "mean": round(statistics.fmean(lat), 3) if lat else None,
        },
        "all_latency_s": {
            "p50": round(_percentile([r[1] for r in results], 0.5), 3),
            "p95": round(_percentile([r[1] for r in results], 0.95), 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--experts", nargs="*", default=None, help="expert folders (default: random ones)")
    ap.add_argument("--random-experts", type=int, default=2)
    ap.add_argument("--adapt", default="prompt", choices=["prompt", "none"])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sequential", type=int, default=6)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="t2 serve --threads (default: torch's choice)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "serve_load.json"))
    args = ap.parse_args(argv)

    import torch

    from transformer_squared.fileio import write_json

    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    tmp = Path(tempfile.mkdtemp(prefix="t2-serve-bench-"))
    t0 = time.perf_counter()
    experts = (
        [Path(e) for e in args.experts]
        if args.experts is not None
        else make_random_experts(args.model, tmp, args.random_experts)
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-c",
        LAUNCH,
        "serve",
        "--model",
        args.model,
        "--port",
        str(port),
        "--no-progress",
        "--adapt",
        args.adapt if experts else "none",
        "--max-batch",
        str(args.max_batch),
        "--queue-size",
        str(args.queue_size),
        "--max-tokens-limit",
        str(max(args.max_tokens, 64)),
        "--log-level",
        "warning",
    ]
    if experts:
        cmd += ["--experts", *map(str, experts)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited:\n{(tmp / 'server.log').read_text()}")
            try:
                health = _get(base + "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start in 10 minutes") from None
                time.sleep(0.5)
        startup = time.perf_counter() - t0
        names = health["experts"]
        print(f"server up in {startup:.1f}s: {health['model']} experts={names} strategy={health['strategy']}")

        def body(i: int) -> dict:
            b = {
                "model": health["model"],
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
            }
            mode = i % 4
            if mode == 1 and names:
                b["model"] = names[0]
            elif mode == 2 and len(names) > 1:
                b["model"] = names[1]
            elif mode == 3:
                b["adapt"] = "none"
            return b  # mode 0: the server's strategy routes it

        _post(base + "/v1/chat/completions", body(0))  # warm-up
        phases = {}
        phases["sequential"] = run_phase(base, [body(i) for i in range(args.sequential)], 1)
        print("sequential:", json.dumps(phases["sequential"]))
        before = _get(base + "/health")["stats"]
        phases["concurrent"] = run_phase(base, [body(i) for i in range(args.requests)], args.concurrency)
        after = _get(base + "/health")["stats"]
        batches = after["batches"] - before["batches"]
        phases["concurrent"]["mean_batch_rows"] = round((after["rows"] - before["rows"]) / max(1, batches), 2)
        print("concurrent:", json.dumps(phases["concurrent"]))
        burst_bodies = [dict(body(i), max_tokens=min(8, args.max_tokens)) for i in range(args.burst)]
        phases["burst"] = run_phase(base, burst_bodies, args.burst)
        final = _get(base + "/health")
        phases["burst"]["healthy_after"] = final["status"] == "ok"
        print("burst:", json.dumps(phases["burst"]))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if args.experts is None:
            shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "command": "python bench/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": health["model"],
        "experts": names,
        "strategy": health["strategy"],
        "settings": {
            k: getattr(args, k)
            for k in (
                "requests",
                "concurrency",
                "sequential",
                "burst",
                "max_tokens",
                "max_batch",
                "queue_size",
                "threads",
            )
        },
        "machine": {
            "cpus": os.cpu_count(),
            "server_torch_threads": health.get("threads"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": "cpu",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "startup_s": round(startup, 1),
        "phases": phases,
        "server_stats": final["stats"],
    }
    write_json(args.out, report)
    seq, con = phases["sequential"], phases["concurrent"]
    print(
        f"\nsequential: {seq['requests_per_s']} req/s, p50 {seq['latency_s']['p50']}s | "
        f"concurrent x{args.concurrency}: {con['requests_per_s']} req/s, p50 {con['latency_s']['p50']}s, "
        f"p95 {con['latency_s']['p95']}s, mean batch {con['mean_batch_rows']} rows | "
        f"burst {args.burst}: {phases['burst']['statuses']}\nwrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
