"""``t2 eval``: accuracy of the base model or an expert on a task split, with a resumable report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import T2Error
from .common import add_data_args, add_model_args, data_task

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.base import Task


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate the base model or an expert on a task (greedy or log-likelihood)",
        description="Greedy, batched evaluation (or, for multiple-choice tasks, the option with the "
        "highest log-likelihood) with a per-item JSONL next to the report. Re-running "
        "with the same --out resumes from the items already written.",
    )
    p.add_argument(
        "--task",
        default=None,
        help="(or --data) a task id (t2 data list): gsm8k, mbpp, humaneval, arc_easy, "
        "arc_challenge, math, classify, csqa, openbookqa, piqa, socialiqa, sciq, hellaswag, winogrande",
    )
    p.add_argument(
        "--mode",
        default="generate",
        choices=["generate", "loglik"],
        help="generate: greedy answer + checker (default); loglik: multiple choice by the options' "
        "log-likelihood, as lm-eval scores these benchmarks",
    )
    p.add_argument(
        "--channel",
        default="cloze",
        choices=["cloze", "letter"],
        help="loglik: option texts after 'Question: ...\\nAnswer:' (cloze, default) or the option "
        "letters as the first token after the chat prompt (letter)",
    )
    p.add_argument(
        "--norm",
        default="token",
        choices=["token", "char", "sum"],
        help="loglik: the score that picks the answer: mean log-prob per token (default), per "
        "character (lm-eval acc_norm) or summed (acc); all three are reported",
    )
    p.add_argument("--split", default="test", help="train, val or test (default: test, the held-out part)")
    p.add_argument("--source", default="offline", help="offline (bundled data), hub, or a JSONL file")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N items of the split")
    p.add_argument("--expert", default=None, help="an expert folder to apply (default: the base model)")
    p.add_argument(
        "--lora",
        default=None,
        metavar="DIR",
        help="a PEFT LoRA adapter folder (e.g. from t2 train --method lora), merged before scoring",
    )
    p.add_argument(
        "--transfer",
        action="store_true",
        help="the expert was trained on another model with the same shapes: pair in layer order",
    )
    a = p.add_argument_group("self-adaptation (two passes)")
    a.add_argument(
        "--adapt",
        default=None,
        choices=["none", "oracle", "prompt", "classifier", "probe", "fewshot"],
        help="route each request with this strategy over --experts",
    )
    a.add_argument("--experts", nargs="+", default=[], metavar="DIR", help="task expert folders")
    a.add_argument("--classifier", default=None, metavar="DIR", help="classification expert (--adapt classifier)")
    a.add_argument(
        "--router",
        default=None,
        metavar="DIR",
        help="early-layer probe router (--adapt probe; made by t2 train-router)",
    )
    a.add_argument(
        "--shots", type=int, default=10, help="labelled examples for --adapt fewshot (excluded from scoring)"
    )
    a.add_argument("--cem-population", type=int, default=32)
    a.add_argument("--cem-iterations", type=int, default=10)
    a.add_argument("--cem-elite-ratio", type=float, default=0.2)
    a.add_argument("--cem-init-std", type=float, default=0.3)
    a.add_argument("--cem-per-matrix", action="store_true", help="one α per expert per matrix (default: per expert)")
    a.add_argument("--mixture", default=None, metavar="DIR", help="reuse a mixture saved by an earlier fewshot run")
    a.add_argument("--mixture-out", default=None, metavar="DIR", help="save the mixture fewshot finds here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--autocast",
        default="none",
        choices=["none", "bf16"],
        help="bf16: matmuls in bf16 (about 2x faster on CPU; picks can differ on near ties), as t2 train --autocast",
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    p.add_argument("--out", default=None, help="report JSON path (items go to <out>.items.jsonl)")
    p.add_argument("--no-progress", action="store_true")
    add_model_args(p)
    add_data_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experts import Expert
    from ..fileio import write_json
    from ..models import model_name
    from ..tasks import get_task

    if args.limit is not None and args.limit < 1:
        raise T2Error(f"--limit must be at least 1, got {args.limit}")
    if args.lora and (args.expert or args.adapt):
        raise T2Error("--lora scores one LoRA adapter on its own; it cannot be combined with --expert or --adapt")
    task = data_task(args) or get_task(args.task, source=args.source)
    items = task.load(args.split)
    if args.limit:
        items = items[: args.limit]
    expert = Expert.load(args.expert) if args.expert else None
    if args.adapt and args.expert:
        raise T2Error("use either --expert (one fixed expert) or --adapt with --experts, not both")
    if args.adapt:
        return run_adaptive(args, task, items)
    out = Path(args.out) if args.out else None
    items_path = out.with_name(out.name + ".items.jsonl") if out else None
    # what a resumed run must share with the one that wrote the items (reports from before --lora
    # existed have no "lora" key, which reads as None: no adapter)
    run_meta = {
        "task": task.name,
        "split": args.split,
        "expert": args.expert,
        "model": args.model,
        "lora": args.lora,
        "mode": args.mode,
        "autocast": args.autocast,
    }
    if expert is not None:
        run_meta["expert_digest"] = expert.digest()
    if args.lora:
        from ..models import adapter_digest

        run_meta["lora_digest"] = adapter_digest(args.lora)
    if args.mode == "loglik":
        run_meta.update(channel=args.channel, norm=args.norm)
    _check_resume(out, items_path, run_meta)
    t0 = time.perf_counter()
    from .common import load_svf

    model, tokenizer, svf = load_svf(args, progress=not args.no_progress) if expert else (*_load_plain(args), None)
    if expert:
        svf.apply(expert, strict=not args.transfer)
    if args.lora:
        from ..lora import apply_adapter

        model = apply_adapter(model, args.lora)
    if out:
        write_json(out.with_name(out.name + ".run.json"), run_meta)
    load_s = time.perf_counter() - t0
    summary, rows = _score(args, model, tokenizer, task, items, items_path)
    answered = sum(r.get("extracted", r.get("pred")) is not None for r in rows)
    report = summary.to_dict()
    report.update(
        model=model_name(model, args.model),
        expert=expert.name if expert else None,
        lora=args.lora,
        source=args.source,
        limit=args.limit,
        answered=answered,
        autocast=args.autocast,
        load_seconds=round(load_s, 2),
        command="t2 " + " ".join(_argv(args)),
    )
    print(summary.line())
    if args.mode == "loglik":
        by = summary.extra["accuracy_by_norm"]
        print(
            f"by normalisation ({args.channel}): "
            + ", ".join(f"{k} {v:.1%}" for k, v in by.items())
            + f"; --norm {args.norm} decides 'correct'"
        )
    else:
        print(f"answered (an answer could be extracted): {answered}/{len(rows)}")
    if summary.provenance:
        print(f"data: {summary.provenance}")
    if out:
        write_json(out, report)
        print(f"report: {out}  items: {items_path}")
    return 0


def run_adaptive(args: argparse.Namespace, task: Task, items: list) -> int:
    """Two-pass evaluation: route each item, then answer in mixed-expert batches."""
    from ..adapt import AdaptiveModel, CEMConfig, cem_search, task_domain
    from ..experts import Expert
    from ..fileio import write_json
    from ..models import model_name
    from .common import load_svf

    experts = [Expert.load(d) for d in args.experts]
    if args.adapt != "none" and not experts and not args.mixture:
        raise T2Error(f"--adapt {args.adapt} needs --experts DIR ...")
    classifier = Expert.load(args.classifier) if args.classifier else None
    router = None
    if args.router:
        from ..probe import ProbeRouter

        router = ProbeRouter.load(args.router)
    model, tokenizer, svf = load_svf(args, progress=not args.no_progress)
    mixture = Expert.load(args.mixture) if args.mixture else None
    search_s = 0.0
    shots: list = []
    if args.adapt == "fewshot":
        shots = task.fewshot_items(args.shots)
        shot_ids = {s.id for s in shots}
        items = [it for it in items if it.id not in shot_ids]
        if mixture is None:
            cfg = CEMConfig(
                population=args.cem_population,
                iterations=args.cem_iterations,
                elite_ratio=args.cem_elite_ratio,
                init_std=args.cem_init_std,
                per_matrix=args.cem_per_matrix,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                mode=args.mode,
                channel=args.channel,
                norm=args.norm,
            )
            from ..models import autocast

            t = time.perf_counter()
            with autocast(args.autocast, args.device, svf.model):  # the search scores in the precision the items are
                mixture, _ = cem_search(svf, tokenizer, task, experts, shots, cfg, progress=not args.no_progress)
            search_s = time.perf_counter() - t
            if args.mixture_out:
                mixture.save(args.mixture_out)
        print(f"fewshot mixture: {mixture.meta.get('mixture')}")
    adaptive = AdaptiveModel(
        svf, tokenizer, experts, strategy=args.adapt, classifier=classifier, mixture=mixture, router=router
    )
    choose = adaptive.chooser(domain=task_domain(task))

    out = Path(args.out) if args.out else None
    items_path = out.with_name(out.name + ".items.jsonl") if out else None
    run_meta = {
        "task": task.name,
        "split": args.split,
        "adapt": args.adapt,
        "experts": list(args.experts),
        "model": args.model,
        "mode": args.mode,
        "autocast": args.autocast,
    }
    if args.mode == "loglik":
        run_meta.update(channel=args.channel, norm=args.norm)
    _check_resume(out, items_path, run_meta)
    if out:
        write_json(out.with_name(out.name + ".run.json"), run_meta)
    summary, rows = _score(
        args,
        model,
        tokenizer,
        task,
        items,
        items_path,
        svf=svf,
        choose_experts=choose,
        desc=f"{'loglik' if args.mode == 'loglik' else 'eval'} {task.name}/{args.split} [{args.adapt}]",
    )
    routed: dict[str, int] = {}
    for r in rows:
        key = r.get("expert") or "base"
        routed[key] = routed.get(key, 0) + 1
    first, second = summary.extra["first_pass_seconds"], summary.extra["second_pass_seconds"]
    report = summary.to_dict()
    report.update(
        model=model_name(model, args.model),
        adapt=args.adapt,
        experts=[e.name for e in experts],
        routed=routed,
        fallbacks=adaptive.stats["fallbacks"],
        fewshot_search_seconds=round(search_s, 2),
        shots=[s.id for s in shots],
        first_pass_fraction=round(first / second, 4) if second else None,
        mixture=mixture.meta.get("mixture") if mixture else None,
        source=args.source,
        limit=args.limit,
        autocast=args.autocast,
    )
    print(summary.line())
    print(f"routed: {routed}; first-pass fallbacks: {adaptive.stats['fallbacks']}")
    print(f"first pass {first:.1f}s, second pass {second:.1f}s ({(first / second if second else 0):.1%} of the second)")
    if out:
        write_json(out, report)
        print(f"report: {out}  items: {items_path}")
    return 0


def _check_resume(out: Path | None, items_path: Path | None, run_meta: dict) -> None:
    """Refuse to append to per-item files written by a run with other settings (a resumed ``--out``)."""
    if not (out and items_path and items_path.exists()):
        return
    meta_path = out.with_name(out.name + ".run.json")
    if meta_path.exists():
        # older .run.json files have no mode (they were generation runs), no lora (no adapter) and
        # no autocast (float32)
        prev = {"mode": "generate", **json.loads(meta_path.read_text())}
        prev["autocast"] = prev.get("autocast") or "none"  # absent, or null in files of 2026-11-30
        keys = set(run_meta)
        for key in ("expert", "lora"):
            if prev.get(f"{key}_digest") and run_meta.get(f"{key}_digest"):
                keys.discard(key)  # the same weights may be read from another folder (a moved checkout)
            else:
                keys.discard(f"{key}_digest")  # older files name the expert or adapter by its path only
        if any(prev.get(k) != run_meta[k] for k in keys):
            raise T2Error(f"{items_path} holds items of another run ({prev}); use another --out or delete it")


def _score(args: argparse.Namespace, model, tokenizer, task: Task, items: list, items_path: Path | None, **adapt):
    """Score ``items`` in the answer mode of ``args`` (greedy generation or option log-likelihood),
    under ``--autocast``; ``adapt`` carries the two-pass hooks (svf, choose_experts, desc)."""
    from ..evaluation import evaluate, evaluate_loglik
    from ..models import autocast

    common = dict(
        split=args.split,
        batch_size=args.batch_size,
        items_jsonl=items_path,
        progress=not args.no_progress,
        **adapt,
    )
    with autocast(args.autocast, args.device, model):
        if args.mode == "loglik":
            return evaluate_loglik(model, tokenizer, task, items, channel=args.channel, norm=args.norm, **common)
        return evaluate(model, tokenizer, task, items, max_new_tokens=args.max_new_tokens, **common)


def _load_plain(args: argparse.Namespace):
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, progress=not args.no_progress)


def _argv(args: argparse.Namespace) -> list[str]:
    parts = ["eval", "--task", args.task, "--split", args.split]
    if args.mode == "loglik":
        parts += ["--mode", "loglik", "--channel", args.channel, "--norm", args.norm]
    if args.limit:
        parts += ["--limit", str(args.limit)]
    if args.expert:
        parts += ["--expert", args.expert]
    if args.lora:
        parts += ["--lora", args.lora]
    if args.autocast != "none":
        parts += ["--autocast", args.autocast]
    if args.model != "default":
        parts += ["--model", args.model]
    return parts
