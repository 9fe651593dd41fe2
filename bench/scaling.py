"""How the cost of one training update grows with model width, sequence length and batch size.

    python bench/scaling.py [--device cpu|cuda] [--widths 128 256 512 1024] [--seqs 64 128 256 512]
                            [--batches 1 4 16] [--layers 4]

Tiny random Llama models (``--layers`` decoder layers, head size 64, MLP 8/3 × width, vocab 8192;
no download) are built at each width. One update = teacher-forced forward on random tokens, mean
next-token loss, backward, AdamW step, for:

* ``svf-factored`` / ``svf-merged``: SVF on the MLP matrices (the paper's default), gradient
  through the factored path or through the recomposed W';
* ``lora``: PEFT LoRA r=16 on q_proj/v_proj (the paper's baseline);
* ``full``: every weight trained, for scale.

Step time is the median of ``--repeats`` steps after one warm-up; peak memory is the extra memory
training needs above what the model already holds: activations, gradients and optimiser state
(CUDA: ``max_memory_allocated``; CPU: the peak resident set, reset through
``/proc/self/clear_refs``, and each point runs in a fresh process so that memory freed by an earlier
point cannot hide the next one's). Widths vary at the
middle sequence length and batch; sequence lengths and batches at the middle width. Writes
docs/results/scaling.json and a plot, docs/results/scaling.png.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import device_name

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["svf-factored", "svf-merged", "lora", "full"]


def tiny_llama(width: int, layers: int, vocab: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=width,
        intermediate_size=(8 * width // 3 + 63) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        num_key_value_heads=max(1, width // 64),
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    with torch.device(device):  # initialise on the device: large widths build in seconds on a GPU
        return LlamaForCausalLM(cfg)


def wrap(model, method: str):
    """The model to call and the tensors to train, for one method."""
    if method.startswith("svf"):
        from transformer_squared.svf import SVFModel

        svf = SVFModel(model, targets="mlp", path=method.split("-")[1], cache=False)
        return svf, list(svf.parameters())
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        )
        return peft_model, [p for p in peft_model.parameters() if p.requires_grad]
    return model, list(model.parameters())


def _rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(width: int, seq: int, batch: int, method: str, args) -> dict:
    cuda = args.device.startswith("cuda")
    model = tiny_llama(width, args.layers, args.vocab, args.device)
    net, params = wrap(model, method)
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (batch, seq), generator=g).to(args.device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = net(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
        )
        loss.backward()
        opt.step()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss("VmRSS") if _rss_peak_reset() else None
    step()  # warm-up; creates the optimiser state, so it counts towards the memory the update needs
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if cuda:
        extra = torch.cuda.max_memory_allocated() - before
    else:
        extra = _rss("VmHWM") - before if before is not None else None
    n_params = sum(p.numel() for p in model.parameters())
    row = {
        "width": width,
        "seq": seq,
        "batch": batch,
        "method": method,
        "step_ms": round(1000 * statistics.median(times), 2),
        "tokens_per_s": round(batch * seq / statistics.median(times), 1),
        "extra_mib": None if extra is None else round(extra / 2**20, 1),
        "trainable": sum(p.numel() for p in params),
        "model_params": n_params,
    }
    return row


def _child(conn, w: int, s: int, b: int, m: str, args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    conn.send(measure(w, s, b, m, args))
    conn.close()


def _in_child(w: int, s: int, b: int, m: str, args) -> dict:
    """:func:`measure` in a fresh process, so its peak resident set is its own."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, w, s, b, m, args))
    proc.start()
    row = recv.recv()
    proc.join()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--widths", type=int, nargs="+", default=None)
    ap.add_argument("--seqs", type=int, nargs="+", default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="on CPU, measure every point in this process (faster, but peak memory is then understated)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "scaling.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    widths = args.widths or ([256, 512, 1024, 2048, 4096] if cuda else [128, 256, 512, 1024])
    seqs = args.seqs or ([128, 256, 512, 1024, 2048] if cuda else [64, 128, 256, 512])
    batches = args.batches or ([1, 4, 16, 64] if cuda else [1, 4, 16])
    mid_w, mid_s, mid_b = widths[len(widths) // 2], seqs[len(seqs) // 2], batches[len(batches) // 2]
    name = device_name(args.device)
    print(f"device: {args.device} ({name}); middle point width {mid_w}, seq {mid_s}, batch {mid_b}", flush=True)
    sweeps = {
        "width": [(w, mid_s, mid_b) for w in widths],
        "seq": [(mid_w, s, mid_b) for s in seqs],
        "batch": [(mid_w, mid_s, b) for b in batches],
    }
    from transformer_squared.fileio import write_json

    cmd = (
        f"python bench/scaling.py --device {args.device} --widths {' '.join(map(str, widths))} "
        f"--seqs {' '.join(map(str, seqs))} --batches {' '.join(map(str, batches))} --layers {args.layers}"
    )
    rows: list[dict] = []
    data = {
        "command": cmd,
        "device": args.device,
        "device_name": name,
        "torch": torch.__version__,
        "layers": args.layers,
        "vocab": args.vocab,
        "middle": {"width": mid_w, "seq": mid_s, "batch": mid_b},
        "rows": rows,
    }
    out = Path(args.out)
    done: dict[tuple, dict] = {}
    for sweep, points in sweeps.items():
        for w, s, b in points:
            for m in args.methods:
                key = (w, s, b, m)
                if key not in done:
                    done[key] = measure(w, s, b, m, args) if cuda or args.in_process else _in_child(w, s, b, m, args)
                    if cuda:
                        torch.cuda.empty_cache()
                    print(done[key], flush=True)
                rows.append({"sweep": sweep, **done[key]})
                write_json(out, data)  # after every point, so an interrupted run keeps what it measured
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(data: dict, path: Path) -> None:
    """Step time (top) and extra memory (bottom) against width, sequence length and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer_squared.fileio import atomic_path

    sweeps = ["width", "seq", "batch"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    mid = data["middle"]
    for j, sweep in enumerate(sweeps):
        rows = [r for r in data["rows"] if r["sweep"] == sweep]
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r[sweep], r["step_ms"], r["extra_mib"]) for r in rows if r["method"] == method)
            axes[0][j].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
            if all(p[2] is not None for p in pts):
                axes[1][j].plot([p[0] for p in pts], [max(p[2], 0.1) for p in pts], marker="o", label=method)
        fixed = ", ".join(f"{k} {v}" for k, v in mid.items() if k != sweep)
        for i, ylabel in enumerate(["step ms", "extra memory MiB"]):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{sweep} ({fixed})")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"One update, {data['layers']}-layer random Llama, {data['device_name']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
