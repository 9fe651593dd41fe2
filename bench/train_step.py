"""Benchmark one RL training step on the default model: SVF (merged / factored forward) vs PEFT LoRA.

    python bench/train_step.py [--model default] [--task arc_easy] [--batch-size 4]
                               [--samples-per-prompt 4] [--max-new-tokens 128] [--repeats 2]

One step = sample K completions for each of B train prompts (generation), score them (rewards),
then the teacher-forced forward + KL base forward + backward + AdamW step (update). Each
configuration runs in a fresh child process so its peak RSS is its own:

* ``svf-merged``: SVF, gradient through the recomposed W' (``train_path="merged"``);
* ``svf-factored``: SVF, gradient through the factored x ↦ x + ((xQ)⊙(g−1))Qᵀ path;
* ``lora``: PEFT LoRA r=16 on q_proj/v_proj under the same loop;
* ``svf-merged-bf16``: as svf-merged with the teacher-forced forwards under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``; it also reports how far bf16 log-probs and
  gradients are from float32 on the same completions.

The SVF variants sample with the same (merged, cached) weights, so generation is timed once in
``svf-merged`` and its completions are replayed in the other SVF children; the update is timed
``--repeats`` times on the same completions (median). At init LoRA computes the same function, so
its samples are the same too (its generation is timed separately: the adapters are not merged).
* ``svf-throughput``: whole RL steps, before vs after prompt sharing and bf16 autocast, alternated in
  one process (see ``THROUGHPUT_VARIANTS``), as completions per second;
* ``trl-grpo-lora``: TRL's ``GRPOTrainer`` with the same PEFT LoRA (r=16 on q_proj/v_proj), the
  same prompts, K, completion length and KL coefficient (beta = 0.1), rewards from the same task
  checker; runs only when ``trl`` is importable (``pip install trl``, or ``PYTHONPATH`` to a folder
  holding it). TRL generates inside its step, so it is timed as whole steps (the median of the
  steps after the first); its completion lengths come from TRL's own log. Everything else is
  GRPOConfig's default, gradient checkpointing included (GRPOConfig turns it on; our loop does not
  checkpoint), so its peak memory is not comparable one-for-one.

``--device`` (default: cuda when available) places the model; peak memory is the child's peak
RSS on CPU and ``torch.cuda.max_memory_allocated`` on CUDA. Writes docs/results/train_step.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "svf-merged": dict(method="svf", train_path="merged"),
    "svf-factored": dict(method="svf", train_path="factored"),
    "lora": dict(method="lora"),
    "svf-merged-bf16": dict(method="svf", train_path="merged", autocast="bf16"),
    "svf-ab": dict(method="svf", train_path="merged"),
    "trl-grpo-lora": dict(method="trl"),
    "svf-throughput": dict(method="svf", train_path="factored"),
}
# svf-throughput: whole steps (sampling + rewards + update), alternating in one process between
# the layout before prompt sharing (one generate call for all B×K rows, each row re-encoding its
# prompt in the update, float32) and after (one call too, each prompt prefilled once for its K
# samples, and encoded once in the update, bf16 autocast with the frozen weights cast once); z is
# restored after every step so both see the same weights. Reported as completions per second.
THROUGHPUT_VARIANTS = {
    "before": dict(share_prompt=False, autocast="none", sample_autocast="none", gen_prompts=None),
    "after": dict(share_prompt=True, autocast="bf16", sample_autocast="none", gen_prompts=None),
    # opt-in (--sample-autocast bf16): sampling in bf16 as well, which draws from the bf16 model
    "after, bf16 sampling": dict(share_prompt=True, autocast="bf16", sample_autocast="bf16", gen_prompts=None),
}
# svf-ab: one process, the same completions, updates alternating between these variants
# (round-robin, first round discarded), so machine load affects them alike.
AB_VARIANTS = [("merged", "none"), ("factored", "none"), ("merged", "bf16"), ("factored", "bf16")]


def child(spec: dict) -> dict:
    """Run one configuration in this (fresh) process and return its measurements."""
    import torch

    from transformer_squared.training import Rollout, TrainConfig, Trainer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    opts = dict(CONFIGS[spec["config"]])
    if opts.get("method") == "trl":
        return trl_child(spec)
    out = tempfile.mkdtemp(prefix="t2-bench-")
    t0 = time.perf_counter()
    cfg = TrainConfig(
        task=spec["task"],
        model=spec["model"],
        out=out,
        batch_size=spec["batch_size"],
        samples_per_prompt=spec["k"],
        max_new_tokens=spec["max_new_tokens"],
        eval_every=0,
        progress=False,
        overwrite=True,
        device=spec.get("device", "cpu"),
        gen_prompts=spec["batch_size"],
        **opts,
    )  # one generate call for all B×K rows, as TRL does
    trainer = Trainer(cfg)
    load_s = time.perf_counter() - t0
    res: dict = {
        "config": spec["config"],
        "trainable_params": trainer.trainable_params,
        "load_seconds": round(load_s, 2),
        "micro_batches": trainer.local_prompts // trainer.micro_prompts,
    }
    replay = spec.get("replay")
    if replay and Path(replay).exists():
        data = json.loads(Path(replay).read_text())
        items = [trainer.item_at(g) for g in range(cfg.batch_size)]
        ro = Rollout(
            1,
            items,
            data["prompt_ids"],
            data["completion_ids"],
            data["texts"],
            torch.tensor(data["rewards"]),
            cfg.samples_per_prompt,
            data["finished"],
        )
        res["generation"] = "replayed from svf-merged"
    else:
        ro = trainer.rollout(1)
        res.update(gen_seconds=round(ro.gen_seconds, 2), reward_seconds=round(ro.reward_seconds, 3))
        if replay:
            Path(replay).write_text(
                json.dumps(
                    {
                        "prompt_ids": ro.prompt_ids,
                        "completion_ids": ro.completion_ids,
                        "texts": ro.texts,
                        "rewards": ro.rewards.tolist(),
                        "finished": ro.finished,
                    }
                )
            )
    res["completion_tokens"] = ro.num_tokens
    res["teacher_forced_tokens"] = ro.num_tokens + sum(len(p) for p in ro.prompt_ids) * ro.k
    res["reward_mean"] = float(ro.rewards.mean())
    if opts.get("autocast") == "bf16":
        res["bf16_vs_fp32"] = compare_bf16(trainer, ro)
    if spec["config"] == "svf-throughput":
        res["throughput"] = throughput(trainer, spec["repeats"])
        res.update(_peak_memory(spec))
        res["update_seconds_median"] = res["throughput"]["after"]["update_median"]
        return res
    if spec["config"] == "svf-ab":
        res["ab"] = alternate(trainer, ro, spec["repeats"])
        res.update(_peak_memory(spec))
        res["update_seconds_median"] = res["ab"]["merged/none"]["median"]
        return res
    times = []
    for _ in range(spec["repeats"]):
        _sync(spec)
        t = time.perf_counter()
        row = trainer.update(ro)
        _sync(spec)
        times.append(time.perf_counter() - t)
        res.setdefault("first_update", {k: row.get(k) for k in ("loss", "kl", "grad_norm")})
    res["update_seconds"] = [round(t, 2) for t in times]
    res["update_seconds_median"] = round(statistics.median(times), 3)
    res.update(_peak_memory(spec))
    return res


def _sync(spec: dict) -> None:
    if spec.get("device", "cpu").startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_memory(spec: dict) -> dict:
    """The child's peak memory: resident set on CPU, allocated device memory on CUDA."""
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if spec.get("device", "cpu").startswith("cuda"):
        import torch

        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def trl_child(spec: dict) -> dict:
    """TRL GRPOTrainer + PEFT LoRA on the same prompts, K, completion length and KL coefficient."""
    import pyarrow as pa
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from transformer_squared.models import load_model
    from transformer_squared.tasks import get_task
    from transformer_squared.training import Trainer

    device = spec.get("device", "cpu")
    task = get_task(spec["task"])
    # the same B prompts our loop uses at step 1: Trainer.item_at's seeded order, without building a trainer
    order = SimpleNamespace(train_items=task.load("train"), _perm_cache=None, config=SimpleNamespace(seed=0))
    items = [Trainer.item_at(order, g) for g in range(spec["batch_size"])]
    t0 = time.perf_counter()
    model, tok = load_model(spec["model"], device=device, progress=False)
    by_id = {it.id: it for it in items}
    rows = [{"prompt": task.prompt(it, tok), "item_id": it.id} for it in items]
    # an explicit fingerprint: datasets' own hashing of the table fails under some dill/pyarrow pairs
    data = Dataset(pa.Table.from_pylist(rows), fingerprint=f"t2-bench-{spec['task']}-{len(rows)}")

    def reward(prompts, completions, item_id, **_):
        return task.rewards([by_id[i] for i in item_id], list(completions))

    steps: list[float] = []
    logged: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            _sync(spec)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync(spec)
            steps.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **k):
            if logs:
                logged.append(dict(logs))

    k = spec["k"]
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="t2-trl-"),
        per_device_train_batch_size=spec["batch_size"] * k,
        num_generations=k,
        max_completion_length=spec["max_new_tokens"],
        beta=0.1,
        temperature=1.0,
        learning_rate=5e-4,
        max_steps=1 + spec["repeats"],
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=not device.startswith("cuda"),
        bf16=False,
        seed=0,
        shuffle_dataset=False,
        disable_dropout=True,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        peft_config=lora,
        callbacks=[Clock()],
    )
    load_s = time.perf_counter() - t0
    trainer.train()
    timed = steps[1:] or steps
    lengths = [lg["completions/mean_length"] for lg in logged if "completions/mean_length" in lg]
    completion_tokens = round(statistics.mean(lengths[1:] or lengths) * spec["batch_size"] * k) if lengths else None
    median = statistics.median(timed)
    res = {
        "config": spec["config"],
        "trl_version": trl.__version__,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "load_seconds": round(load_s, 2),
        "step_seconds_all": [round(t, 3) for t in steps],
        "step_seconds": round(median, 3),
        "completion_tokens": completion_tokens,
        "reward_mean": next((lg["reward"] for lg in logged if "reward" in lg), None),
    }
    res.update(_peak_memory(spec))
    return res


def alternate(trainer, ro, repeats: int) -> dict:
    """Update seconds of each (train path, autocast) variant, measured round-robin in one process."""
    times: dict[str, list[float]] = {f"{p}/{a}": [] for p, a in AB_VARIANTS}
    for round_ in range(repeats + 1):
        for path, autocast in AB_VARIANTS:
            trainer.policy.train_path, trainer.config.autocast = path, autocast
            t = time.perf_counter()
            trainer.update(ro)
            if round_:
                times[f"{path}/{autocast}"].append(round(time.perf_counter() - t, 2))
    trainer.policy.train_path, trainer.config.autocast = "merged", "none"
    return {k: {"seconds": v, "median": round(statistics.median(v), 2), "min": min(v)} for k, v in times.items()}


def throughput(trainer, repeats: int) -> dict:
    """Completions per second of whole steps, before vs after prompt sharing (round-robin, first round dropped)."""
    from transformer_squared.training.config import auto_micro_prompts

    c = trainer.config
    start = trainer.policy.state()
    batch_gen = c.batch_size
    micro_batches: dict[str, int] = {}
    rows = c.batch_size * c.samples_per_prompt
    out: dict[str, dict] = {name: {"step": [], "gen": [], "update": [], "tokens": []} for name in THROUGHPUT_VARIANTS}
    for round_ in range(repeats + 1):
        for name, opts in THROUGHPUT_VARIANTS.items():
            c.share_prompt, c.autocast, c.sample_autocast = (
                opts["share_prompt"],
                opts["autocast"],
                opts["sample_autocast"],
            )
            c.gen_prompts = opts["gen_prompts"] or batch_gen
            # the micro-batches the trainer picks for this layout (fixed at its start otherwise)
            micro = auto_micro_prompts(c, trainer.local_prompts, trainer.max_new_tokens)
            trainer.micro_prompts = trainer.gradients.micro_prompts = micro
            micro_batches[name] = trainer.local_prompts // micro
            trainer.policy.load_state(start)
            t = time.perf_counter()
            ro = trainer.rollout(1)
            t_gen = time.perf_counter() - t
            trainer.update(ro)
            if round_:
                out[name]["step"].append(time.perf_counter() - t)
                out[name]["gen"].append(t_gen)
                out[name]["update"].append(time.perf_counter() - t - t_gen)
                out[name]["tokens"].append(ro.num_tokens)  # bf16 sampling draws other completions
    trainer.policy.load_state(start)
    res = {}
    for name, v in out.items():
        med = statistics.median(v["step"])
        res[name] = {
            "step_median": round(med, 2),
            "gen_median": round(statistics.median(v["gen"]), 2),
            "update_median": round(statistics.median(v["update"]), 2),
            "completions_per_s": round(rows / med, 3),
            "micro_batches": micro_batches[name],
            "completion_tokens_median": statistics.median(v["tokens"]),
            **THROUGHPUT_VARIANTS[name],
        }
    res["speedup"] = round(res["after"]["completions_per_s"] / res["before"]["completions_per_s"], 2)
    res["speedup_bf16_sampling"] = round(
        res["after, bf16 sampling"]["completions_per_s"] / res["before"]["completions_per_s"], 2
    )
    return res


def compare_bf16(trainer, ro) -> dict:
    """Per-sequence log-probs and the gradient under bf16 autocast vs float32, same completions."""
    import torch

    def grads() -> torch.Tensor:
        for p in trainer.params:
            p.grad = None
        trainer.accumulate_gradients(ro)
        g = torch.cat([p.grad.reshape(-1).clone() for p in trainer.params])
        for p in trainer.params:
            p.grad = None
        return g

    trainer.config.autocast = "none"
    lp32 = trainer.sequence_logprobs(ro)
    g32 = grads()
    trainer.config.autocast = "bf16"
    lp16 = trainer.sequence_logprobs(ro)
    g16 = grads()
    tokens = torch.tensor([max(1, len(c)) for c in ro.completion_ids], dtype=torch.float32)
    diff = (lp16 - lp32).abs()
    return {
        "seq_logprob_mean_abs": round(float(lp32.abs().mean()), 3),
        "seq_logprob_max_abs_diff": round(float(diff.max()), 4),
        "per_token_mean_abs_diff": round(float((diff / tokens).mean()), 5),
        "grad_cosine": round(float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)), 5),
        "grad_norm_ratio": round(float(g16.norm() / g32.norm()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--samples-per-prompt", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "train_step.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from common import device_name

    where = device_name(device)
    print(f"device: {device} ({where})", flush=True)
    replay = Path(tempfile.mkdtemp(prefix="t2-bench-")) / "rollout.json"
    results = []
    trl = importlib.util.find_spec("trl") is not None
    names = args.configs.split(",")
    if "trl-grpo-lora" in names and not trl:
        names.remove("trl-grpo-lora")
    for name in names:
        spec = {
            "config": name,
            "model": args.model,
            "task": args.task,
            "batch_size": args.batch_size,
            "k": args.samples_per_prompt,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "threads": args.threads,
            "device": device,
            "replay": str(replay) if name.startswith("svf") and name != "svf-throughput" else None,
        }
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            sys.exit(1)
        res = json.loads(lines[-1][len("RESULT ") :])
        res["wall_seconds"] = round(time.perf_counter() - t, 1)
        results.append(res)
        print(f"{name}: {json.dumps(res)}", flush=True)
    gen = next((r for r in results if "gen_seconds" in r and r["config"].startswith("svf")), None)
    for r in results:
        if r["config"].startswith("trl"):
            r["tokens_per_s"] = round(r["completion_tokens"] / r["step_seconds"], 1) if r["completion_tokens"] else None
            continue
        g = r.get("gen_seconds", gen["gen_seconds"] if gen else 0.0)
        rw = r.get("reward_seconds", gen["reward_seconds"] if gen else 0.0)
        r["step_seconds"] = round(g + rw + r["update_seconds_median"], 2)
        r["tokens_per_s"] = round(r["completion_tokens"] / r["step_seconds"], 1)
        r["update_tokens_per_s"] = round(r["teacher_forced_tokens"] / r["update_seconds_median"], 1)
    print(
        f"\n{'config':18} {'params':>9} {'gen s':>9} {'update s':>9} {'step s':>7} {'tok/s':>6} "
        f"{'upd tok/s':>9} {'peak MiB':>12}"
    )
    for r in results:
        print(
            f"{r['config']:18} {r['trainable_params']:>9,} {r.get('gen_seconds', '(in step)' if r['config'].startswith('trl') else '(replay)')!s:>9} "
            f"{r.get('update_seconds_median', '-')!s:>9} {r['step_seconds']:>7} {r['tokens_per_s']!s:>6} "
            f"{r.get('update_tokens_per_s', '-')!s:>9} {r.get('peak_cuda_mib', r['peak_rss_mib']):>12}"
        )
    for r in results:
        if "bf16_vs_fp32" in r:
            print(f"bf16 autocast vs fp32: {r['bf16_vs_fp32']}")
        if "throughput" in r:
            tp = r["throughput"]
            print(
                f"completions/s, whole steps alternated in one process: before {tp['before']['completions_per_s']} "
                f"(gen {tp['before']['gen_median']} s + update {tp['before']['update_median']} s), after "
                f"{tp['after']['completions_per_s']} (gen {tp['after']['gen_median']} s + update "
                f"{tp['after']['update_median']} s): {tp['speedup']}x; with --sample-autocast bf16 "
                f"{tp['after, bf16 sampling']['completions_per_s']} (gen {tp['after, bf16 sampling']['gen_median']} s): "
                f"{tp['speedup_bf16_sampling']}x"
            )
        if "ab" in r:
            print(
                "update seconds, variants alternated in one process (median / min): "
                + ", ".join(f"{k} {v['median']} / {v['min']}" for k, v in r["ab"].items())
            )
    # model FLOPs per teacher-forced token of an update: forward with grad (2 per Linear weight),
    # backward to the activations (2 more; frozen weights need no weight gradient) and the KL's
    # base-model forward (2 more); attention scores, norms and the tiny z / LoRA gradients left out
    from transformer_squared.models import load_model

    plain, _ = load_model(args.model, progress=False)
    linear = sum(m.weight.numel() for m in plain.modules() if isinstance(m, torch.nn.Linear))
    del plain
    note = (
        "TRL GRPOTrainer + LoRA measured (config trl-grpo-lora)"
        if any(r["config"].startswith("trl") for r in results)
        else "trl is not installed: no GRPOTrainer comparison"
        if not trl
        else "trl-grpo-lora not asked for"
    )
    print(note)
    report = {
        "command": "python bench/train_step.py " + " ".join(sys.argv[1:]),
        "device": device,
        "device_name": where,
        "model": args.model,
        "task": args.task,
        "batch_size": args.batch_size,
        "samples_per_prompt": args.samples_per_prompt,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "torch_threads": args.threads or "default",
        "trl": note,
        "update_flops_per_token": 6 * linear,
        "results": results,
    }
    sys.path.insert(0, str(ROOT / "src"))
    from transformer_squared.fileio import write_json

    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
