"""Evaluating a model (base, an expert, or an adaptive strategy) on a task split.

Two answer modes:

* :func:`evaluate` (``generate``): batched greedy generation and the task's checker;
* :func:`evaluate_loglik` (``loglik``, multiple-choice tasks): the option with the highest
  log-likelihood, in the ``cloze`` channel (option texts after ``Question: ...\nAnswer:``, as
  lm-eval scores these benchmarks) or the ``letter`` channel (the option letters as the first
  token after the chat prompt). Every length normalisation is recorded per item.

Both write a per-item JSONL that makes an interrupted run resumable, and a summary with a 95%
Wilson confidence interval and throughput. :mod:`transformer_squared.stats` compares two runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import T2Error
from .fileio import append_jsonl
from .generation import generate

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from .svf import SVFModel
    from .tasks.base import TaskProtocol


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n (well-behaved at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class EvalSummary:
    """What an evaluation measured (``accuracy`` in [0, 1])."""

    task: str
    split: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    seconds: float
    items_per_s: float
    tokens_per_s: float
    generated_tokens: int
    provenance: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        lo, hi = self.ci95
        return (
            f"{self.task}/{self.split}: {self.accuracy:.1%} ({self.correct}/{self.n}), "
            f"95% CI [{lo:.1%}, {hi:.1%}]; {self.items_per_s:.2f} items/s, {self.tokens_per_s:.1f} tokens/s"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def _extract(task: TaskProtocol, item, text: str):
    """The answer the checker saw: :meth:`Task.extract_for <transformer_squared.tasks.base.Task.extract_for>`
    (a task of one's own that only meets TaskProtocol may have just ``extract``)."""
    return task.extract_for(item, text) if hasattr(task, "extract_for") else task.extract(text)


def _read_done(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that item is simply redone
            done[str(row["id"])] = row
    return done


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskProtocol,
    items: Sequence,
    *,
    split: str = "test",
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    svf: SVFModel | None = None,
    choose_experts: Callable[[Sequence], Sequence] | None = None,
    items_jsonl: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> tuple[EvalSummary, list[dict]]:
    """Greedy-generate an answer for every item, check it, and summarise.

    ``choose_experts(batch_items)`` (with ``svf``) returns one expert (or None for the base
    weights) per item: the adaptation layer's first pass. ``items_jsonl`` is appended to as
    batches finish; items already in it are not generated again (resume).
    """
    if not items:
        raise T2Error("nothing to evaluate: the item list is empty")
    if batch_size < 1:
        raise T2Error("batch_size must be at least 1")
    from tqdm.auto import tqdm

    max_new: int = max_new_tokens if max_new_tokens else getattr(task, "max_new_tokens", 256)
    path = Path(items_jsonl) if items_jsonl else None
    done = _read_done(path) if path else {}
    todo = [it for it in items if str(it.id) not in done]
    rows: list[dict] = [done[str(it.id)] for it in items if str(it.id) in done]
    bar = tqdm(
        total=len(items),
        initial=len(items) - len(todo),
        disable=not progress,
        desc=desc or f"eval {task.name}/{split}",
        unit="item",
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    new_tokens = 0
    first_pass = second_pass = 0.0
    correct_so_far = sum(bool(r["correct"]) for r in rows)
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompts = [task.prompt(it, tokenizer) for it in batch]
            t_first = time.perf_counter()
            experts = list(choose_experts(batch)) if choose_experts is not None else None
            first_pass += time.perf_counter() - t_first
            t_second = time.perf_counter()
            gens = generate(
                model,
                tokenizer,
                prompts,
                max_new_tokens=max_new,
                batch_size=batch_size,
                svf=svf if experts is not None else None,
                experts=experts,
            )
            second_pass += time.perf_counter() - t_second
            completions = [g.text for g in gens]
            oks = task.correct_many(batch, completions)
            new_rows = []
            for i, (it, g, ok) in enumerate(zip(batch, gens, oks, strict=True)):
                row = {
                    "id": str(it.id),
                    "prompt": prompts[i],
                    "completion": g.text,
                    "extracted": _extract(task, it, g.text),
                    "correct": bool(ok),
                    "reward": task.reward_correct if ok else task.reward_wrong,
                    "num_tokens": g.num_tokens,
                }
                if experts is not None:
                    e = experts[i]
                    row["expert"] = None if e is None else e.name
                new_rows.append(row)
                new_tokens += g.num_tokens
                correct_so_far += bool(ok)
            if path:
                append_jsonl(path, new_rows)
            rows.extend(new_rows)
            bar.update(len(batch))
            bar.set_postfix(acc=f"{correct_so_far / max(1, len(rows)):.1%}")
    finally:
        bar.close()
    summary = _summarise(
        task,
        split,
        items,
        rows,
        len(todo),
        time.perf_counter() - t0,
        new_tokens,
        {"first_pass_seconds": round(first_pass, 3), "second_pass_seconds": round(second_pass, 3)},
    )
    return summary, rows


def _summarise(
    task: TaskProtocol,
    split: str,
    items: Sequence,
    rows: list[dict],
    n_new: int,
    seconds: float,
    new_tokens: int,
    extra: dict[str, Any],
) -> EvalSummary:
    """The summary of an evaluation's rows (sorted in place into the items' order)."""
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    split_info = getattr(task, "split_info", None)  # optional for a TaskProtocol
    try:
        info = split_info(split) if split_info is not None else {}
    except (T2Error, AttributeError):
        info = {}
    order = {str(it.id): i for i, it in enumerate(items)}
    rows.sort(key=lambda r: order.get(str(r["id"]), 0))
    return EvalSummary(
        task=task.name,
        split=split,
        n=n,
        correct=k,
        accuracy=k / n,
        ci95=wilson_interval(k, n),
        seconds=round(seconds, 3),
        items_per_s=(n_new / seconds) if seconds > 0 and n_new else 0.0,
        tokens_per_s=(new_tokens / seconds) if seconds > 0 else 0.0,
        generated_tokens=new_tokens,
        provenance=str(info.get("provenance", "")),
        extra=extra,
    )


def _resume(items: Sequence, items_jsonl: str | Path | None) -> tuple[Path | None, list, list[dict]]:
    path = Path(items_jsonl) if items_jsonl else None
    done = _read_done(path) if path else {}
    todo = [it for it in items if str(it.id) not in done]
    rows = [done[str(it.id)] for it in items if str(it.id) in done]
    return path, todo, rows


def evaluate_loglik(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskProtocol,
    items: Sequence,
    *,
    split: str = "test",
    channel: str = "cloze",
    norm: str = "token",
    batch_size: int = 16,
    items_jsonl: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
    share_prefix: bool = True,
    svf: SVFModel | None = None,
    choose_experts: Callable[[Sequence], Sequence] | None = None,
) -> tuple[EvalSummary, list[dict]]:
    """Multiple choice by log-likelihood: the answer is the option with the highest score.

    ``choose_experts(batch_items)`` (with ``svf``) is the adaptation layer's first pass, as in
    :func:`evaluate`: one expert (or None) per item; the batch is then scored one group of items
    per chosen expert (each group with that expert's merged weights), and each row records its
    ``expert``; the summary has the first- and second-pass seconds.

    ``norm`` picks the score that decides ``correct`` (``token``: mean log-prob per token, the
    quantity ``t2 train --objective exact`` optimises; ``char``: per character, lm-eval's
    ``acc_norm``; ``sum``: lm-eval's ``acc``); every row also records the choice and correctness
    under each normalisation, and the summary reports all three accuracies.
    """
    import torch

    from .scoring import NORMS, score_options
    from .tasks.multiple_choice import CHANNELS, is_multiple_choice

    if not items:
        raise T2Error("nothing to evaluate: the item list is empty")
    if not is_multiple_choice(task):
        raise T2Error(
            f"--mode loglik scores the options of multiple-choice tasks; {task.name!r} has none (use --mode generate)"
        )
    if channel not in CHANNELS:
        raise T2Error(f"unknown answer channel {channel!r}; use one of: {', '.join(CHANNELS)}")
    if norm not in NORMS:
        raise T2Error(f"unknown normalisation {norm!r}; use one of: {', '.join(NORMS)}")
    if batch_size < 1:
        raise T2Error("batch_size must be at least 1")
    from tqdm.auto import tqdm

    if choose_experts is not None and svf is None:
        raise T2Error("choose_experts needs the SVF model (svf=...) to apply the chosen experts")
    path, todo, rows = _resume(items, items_jsonl)
    bar = tqdm(
        total=len(items),
        initial=len(items) - len(todo),
        disable=not progress,
        desc=desc or f"loglik {task.name}/{split} [{channel}]",
        unit="item",
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    first_pass = second_pass = 0.0

    def score(batch: list) -> list:
        requests = [task.requests(it, channel, tokenizer) for it in batch]
        return score_options(model, tokenizer, requests, batch_size=batch_size, share_prefix=share_prefix)

    try:
        with torch.no_grad():
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                experts = None
                if choose_experts is not None:
                    t_first = time.perf_counter()
                    experts = list(choose_experts(batch))
                    first_pass += time.perf_counter() - t_first
                t_second = time.perf_counter()
                if experts is None:
                    scores = score(batch)
                else:
                    assert svf is not None  # checked above: choose_experts comes with svf
                    scores = _score_by_expert(svf, batch, experts, score)
                second_pass += time.perf_counter() - t_second
                new_rows = []
                for i, (it, sc) in enumerate(zip(batch, scores, strict=True)):
                    gold = task.gold_index(it)
                    picks = {n: int(torch.argmax(sc.normalised(n)).item()) for n in NORMS}
                    new_rows.append(
                        {
                            "id": str(it.id),
                            "gold": gold,
                            "channel": channel,
                            "norm": norm,
                            "logp": [round(float(v), 5) for v in sc.logp],
                            "n_tokens": sc.n_tokens.tolist(),
                            "n_chars": sc.n_chars.tolist(),
                            "pred": picks,
                            "correct_by_norm": {n: picks[n] == gold for n in NORMS},
                            "correct": picks[norm] == gold,
                        }
                    )
                    if experts is not None:
                        new_rows[-1]["expert"] = None if experts[i] is None else experts[i].name
                if path:
                    append_jsonl(path, new_rows)
                rows.extend(new_rows)
                bar.update(len(batch))
                bar.set_postfix(acc=f"{sum(bool(r['correct']) for r in rows) / max(1, len(rows)):.1%}")
    finally:
        bar.close()
    by_norm = {nm: sum(bool(r["correct_by_norm"][nm]) for r in rows) / len(rows) for nm in NORMS}
    extra: dict[str, Any] = {"mode": "loglik", "channel": channel, "norm": norm, "accuracy_by_norm": by_norm}
    if choose_experts is not None:
        extra.update(first_pass_seconds=round(first_pass, 3), second_pass_seconds=round(second_pass, 3))
    summary = _summarise(task, split, items, rows, len(todo), time.perf_counter() - t0, 0, extra)
    return summary, rows


def _score_by_expert(svf: SVFModel, batch: list, experts: list, score: Callable[[list], list]) -> list:
    """Score a batch one group per distinct expert (None: the base weights), in the batch's order."""
    from .generation import expert_weights

    groups: dict[int, list[int]] = {}
    for i, e in enumerate(experts):
        groups.setdefault(id(e), []).append(i)
    out: list = [None] * len(batch)
    for idx in groups.values():
        with expert_weights(svf, [experts[idx[0]]]):
            for i, sc in zip(idx, score([batch[i] for i in idx]), strict=True):
                out[i] = sc
    return out
