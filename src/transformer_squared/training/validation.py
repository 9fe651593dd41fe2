"""Validation: scoring the policy on the task's ``val`` split, and the summary saved with the best weights.

:func:`evaluate_val` is what the trainer runs every ``eval_every`` steps (rank 0 only, never on
``test``): greedy accuracy plus the mean per-token log-likelihood of the reference answers, or,
for a multiple-choice channel (``objective="exact"``), the options scored in that channel and the
mean log π(gold) of the softmax over them. The second number only breaks accuracy ties
(:func:`~.run_dir.is_better`, as in the CEM search). :func:`expert_summary` is the meta written
next to the best weights (an expert folder for SVF, a PEFT adapter folder for LoRA).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .policies import Policy

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from ..tasks.base import Item, TaskProtocol


def mean_gold_logprob(rows: Sequence[dict[str, Any]], norm: str) -> float | None:
    """Mean log π(gold) of the softmax over normalised option scores, from loglik evaluation rows."""
    from ..scoring import OptionScores

    vals = []
    for r in rows:
        sc = OptionScores(torch.tensor(r["logp"]), torch.tensor(r["n_tokens"]), torch.tensor(r["n_chars"]))
        vals.append(float(F.log_softmax(sc.normalised(norm), dim=0)[r["gold"]]))
    return sum(vals) / len(vals) if vals else None


def evaluate_val(
    config: TrainConfig,
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskProtocol,
    items: Sequence[Item],
    max_new_tokens: int,
) -> tuple[float, int, float, float | None]:
    """Accuracy of ``policy`` on the val ``items`` and its tie-breaker: (accuracy, n, seconds, loglik or None).

    Greedy generation and the references' mean per-token log-likelihood (one teacher-forced pass),
    or with ``config.mc_channel`` the options scored in the trained channel, no generation. Under
    ``config.autocast="bf16"`` validation runs in the precision the run trains in (about 2x faster
    on CPU; tests/test_train_options.py checks that the option reaches it).
    """
    from ..evaluation import evaluate, evaluate_loglik
    from ..models import autocast
    from ..scoring import mean_reference_loglik

    t0 = time.perf_counter()
    c = config
    with torch.no_grad(), policy.sampling(), autocast(c.autocast, c.device, policy.model):
        if c.mc_channel:  # choose in the channel that is trained: options scored, no generation
            summary, rows = evaluate_loglik(
                policy.model,
                tokenizer,
                task,
                items,
                split="val",
                channel=c.mc_channel,
                norm=c.norm,
                batch_size=c.eval_batch_size,
                progress=False,
            )
            return summary.accuracy, summary.n, time.perf_counter() - t0, mean_gold_logprob(rows, c.norm)
        summary, _ = evaluate(
            policy.model,
            tokenizer,
            task,
            items,
            split="val",
            batch_size=c.eval_batch_size,
            max_new_tokens=max_new_tokens,
            progress=False,
        )
        loglik = mean_reference_loglik(policy.model, tokenizer, task, items, c.eval_batch_size)
    return summary.accuracy, summary.n, time.perf_counter() - t0, loglik


def expert_summary(
    config: TrainConfig,
    task: TaskProtocol,
    *,
    model_name: str,
    best_step: int | None,
    best_val: float | None,
    val_n: int,
    max_new_tokens: int,
    world_size: int,
    trainable_params: int,
) -> dict[str, Any]:
    """The meta saved with the best weights: what was trained, on what, how, and how well on val."""
    c = config
    info: dict[str, Any] = {}
    split_info = getattr(task, "split_info", None)  # not part of TaskProtocol; where known, the train data's provenance
    if split_info is not None:
        with contextlib.suppress(Exception):
            info = split_info("train")
    return {
        "task": task.name,
        "domain": getattr(task, "expert_domain", None) or getattr(task, "domain", None),
        # a classification expert must be asked with the label set it learned (AdaptiveModel reads it)
        "labels": list(getattr(task, "labels", None) or []) or None,
        "method": c.method,
        "objective": c.objective,
        "model": model_name,
        "best_step": best_step,
        "best_val_accuracy": best_val,
        "val_n": val_n,
        "steps": c.steps,
        "batch_size": c.batch_size,
        "samples_per_prompt": c.samples_per_prompt,
        "lr": c.lr,
        "kl_coef": c.kl_coef,
        "baseline": c.baseline,
        "temperature": c.temperature,
        "max_new_tokens": max_new_tokens,
        "seed": c.seed,
        "world_size": world_size,
        "trainable_params": trainable_params,
        "train_provenance": info.get("provenance"),
    }


__all__ = ["evaluate_val", "expert_summary", "mean_gold_logprob"]
