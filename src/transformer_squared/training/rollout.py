"""The data half of a step: this process's prompts, their K sampled completions and rewards (a :class:`Rollout`).

:func:`load_items` reads the task's train and val items once; each step then takes its prompts from them.

* ``objective="rl"``: K completions per prompt from :func:`~transformer_squared.generation.sample_groups`
  (each prompt prefilled once, KV cache, z fixed so SVF uses its cached merged weights), or from
  :func:`~transformer_squared.generation.generate` on K copies of each prompt with
  ``share_prompt=False`` (the same samples). ``gen_prompts`` prompts share one call seeded by
  (seed, step, index of its first prompt) (:func:`sample_seed`); with the default of one, the
  samples do not depend on how prompts are split between processes or micro-batches. Rewards
  come from ``task.rewards`` through :func:`safe_rewards`.
* ``objective="sft"``: the items' reference solutions are the completions; no rewards.
* a multiple-choice objective (``exact``, or ``sft`` in an answer channel): only the items; the
  loss sums over every option.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import T2Error
from .config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from ..tasks.base import TaskProtocol

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One process's share of a step: prompts, completions (prompt-major, K per prompt), rewards."""

    step: int
    items: list
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    rewards: torch.Tensor | None  # (P, K); None for SFT
    k: int
    finished: list[bool]
    reward_errors: list[dict[str, Any]] = field(default_factory=list)
    gen_seconds: float = 0.0
    reward_seconds: float = 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def sample_seed(seed: int, step: int, index: int) -> int:
    """The generation seed of one prompt group: a hash of (run seed, step, global prompt index)."""
    digest = hashlib.sha256(f"t2-rl/{seed}/{step}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def safe_rewards(
    task: TaskProtocol, items: Sequence, completions: Sequence[str], seconds: float | None = None
) -> tuple[list[float], list[dict[str, Any]]]:
    """``task.rewards`` for a batch; an item whose check raises gets ``task.reward_wrong`` and an error record.

    Any exception from the task's checker is caught on purpose: a broken checker must not kill
    hours of training, but every failure is reported (metrics and reward_errors.jsonl). A task that
    keeps the standard ±reward of its checker is checked under a per-sample time budget
    (:func:`~transformer_squared.rewards_guard.bounded_correct_many`): a check that overruns gets
    ``reward_wrong`` and is reported the same way.
    """
    from ..tasks.base import Task

    if isinstance(task, Task) and type(task).rewards is Task.rewards:
        from ..rewards_guard import DEFAULT_SECONDS, bounded_correct_many

        problems: list[dict[str, Any]] = []

        def record(index: int, reason: str) -> None:
            problems.append({"index": index, "id": str(getattr(items[index], "id", index)), "error": reason[:500]})

        oks = bounded_correct_many(task, list(items), list(completions), seconds or DEFAULT_SECONDS, on_problem=record)
        return [task.reward_correct if ok else task.reward_wrong for ok in oks], problems
    try:
        out = [float(r) for r in task.rewards(list(items), list(completions))]
        if len(out) == len(items):
            return out, []
    except Exception:  # noqa: BLE001 - retried item by item below
        pass
    rewards: list[float] = []
    errors: list[dict[str, Any]] = []
    for i, (item, text) in enumerate(zip(items, completions, strict=True)):
        try:
            rewards.append(float(task.rewards([item], [text])[0]))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            rewards.append(float(task.reward_wrong))
            errors.append(
                {"index": i, "id": str(getattr(item, "id", i)), "error": f"{type(exc).__name__}: {exc}"[:500]}
            )
    return rewards, errors


def load_items(config: TrainConfig, task: TaskProtocol | None = None) -> tuple[Any, list, list]:
    """(task, train items, val items): the task ``config.task`` names unless one is given, checked for the objective."""
    c = config
    if task is None:
        from ..tasks import get_task

        task = get_task(c.task, source=c.source, reward_correct=c.reward_correct, reward_wrong=c.reward_wrong)
    splits = task.splits() if hasattr(task, "splits") else ["train", "val"]
    if "train" not in splits:
        raise T2Error(
            f"task {task.name!r} has no train split (it has: {', '.join(splits)}); it is for "
            "evaluation only. Train on gsm8k, mbpp or arc_easy, or give --source a JSONL file "
            "with train records"
        )
    train_items = list(task.load("train"))
    if c.mc_channel:
        from ..tasks.multiple_choice import is_multiple_choice

        if not is_multiple_choice(task):
            raise T2Error(
                f"--objective {c.objective} with an answer channel needs a multiple-choice task (a finite "
                f"answer set); {task.name!r} has open answers: use --objective rl or sft without --channel"
            )
    if c.objective == "sft" and not c.mc_channel:
        train_items = [it for it in train_items if getattr(it, "reference", None)]
        if not train_items:
            raise T2Error(
                f"task {task.name!r} has no reference solutions in its train split, so "
                "--objective sft has nothing to imitate; use --objective rl"
            )
    if not train_items:
        raise T2Error(f"the train split of task {task.name!r} is empty")
    val_items: list = []
    if c.eval_every:
        if "val" not in splits:
            raise T2Error(
                f"task {task.name!r} has no val split to choose the best weights on; "
                "pass --eval-every 0 to keep the last weights instead"
            )
        val_items = list(task.load("val"))[: c.val_limit]
        if 0 < len(val_items) < 500 and c.val_limit is not None:
            se = 100 * math.sqrt(0.25 / len(val_items))
            log.warning(
                "choosing the best weights on %d val items (standard error up to %.1f points); "
                "--val-limit 0 uses all of them",
                len(val_items),
                se,
            )
    return task, train_items, val_items


def collect_rollout(
    step: int,
    items: list,
    indices: Sequence[int],
    *,
    config: TrainConfig,
    task: TaskProtocol,
    policy,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    eos_id: int,
) -> Rollout:
    """The rollout of ``items`` at ``step`` (1-based); ``indices`` are their global positions in the step's batch."""
    from ..generation import generate, sample_groups

    c, tok = config, tokenizer
    if c.mc_channel:  # nothing to sample: the loss sums over every option
        return Rollout(step, items, [], [], [], None, 1, [True] * len(items))
    prompts = [task.prompt(it, tok) for it in items]
    prompt_ids = [list(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if c.objective == "sft":
        completions = []
        for it in items:
            ids = list(tok(it.reference, add_special_tokens=False)["input_ids"])[: max_new_tokens - 1]
            completions.append(ids + [eos_id])
        return Rollout(
            step, items, prompt_ids, completions, [it.reference for it in items], None, 1, [True] * len(items)
        )
    k = c.samples_per_prompt
    t0 = time.perf_counter()
    gens = []
    from ..models import autocast

    device = next(policy.model.parameters()).device
    with torch.no_grad(), policy.sampling(), autocast(c.sample_autocast, device, policy.model):
        for g0 in range(0, len(items), c.gen_prompts):
            group = prompts[g0 : g0 + c.gen_prompts]
            seed = sample_seed(c.seed, step, indices[g0])
            if c.share_prompt:  # the same samples, each prompt prefilled once, one decoding loop
                gens += sample_groups(
                    policy.model,
                    tok,
                    group,
                    k,
                    max_new_tokens=max_new_tokens,
                    temperature=c.temperature,
                    top_p=c.top_p,
                    seed=seed,
                )
                continue
            gens += generate(
                policy.model,
                tok,
                [p for p in group for _ in range(k)],
                max_new_tokens=max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                batch_size=len(group) * k,
                seed=seed,
            )
    t1 = time.perf_counter()
    texts = [g.text for g in gens]
    rewards, errors = safe_rewards(task, [it for it in items for _ in range(k)], texts)
    for e in errors:
        e["step"] = step
    t2 = time.perf_counter()
    return Rollout(
        step,
        items,
        prompt_ids,
        [list(g.token_ids) for g in gens],
        texts,
        torch.tensor(rewards, dtype=torch.float32).view(len(items), k),
        k,
        [g.finished for g in gens],
        errors,
        t1 - t0,
        t2 - t1,
    )


__all__ = ["Rollout", "collect_rollout", "load_items", "safe_rewards", "sample_seed"]
