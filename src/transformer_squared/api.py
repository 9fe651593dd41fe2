"""The Python entry point for training on any task, built-in or your own: :func:`train`.

    import transformer_squared as t2
    task = t2.get_task("generic", source="examples/capitals.jsonl", prompt_field="question",
                       answer_field="answer", reward="examples/capitals_reward.py:reward", domain="geography")
    result = t2.train(task=task, out="runs/capitals", steps=4, batch_size=4)

It reads the data and tries the reward function before any model is loaded, so a bad file or a
broken reward fails at once with one line; the expert it saves carries the task's domain.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from .errors import T2Error

log = logging.getLogger("transformer_squared")


def train(
    config: Any = None,
    *,
    task: Any = None,
    model: Any = None,
    tokenizer: Any = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> Any:
    """Train an SVF expert (or the LoRA baseline); return the :class:`~transformer_squared.training.TrainResult`.

    ``config``: a :class:`~transformer_squared.training.TrainConfig` (or None); ``options``: TrainConfig
    fields that override it (``out``, ``steps``, ``batch_size``, ``lr``, ...; see docs/training.md).
    ``task``: a task name (``"gsm8k"``) or a task object (:func:`~transformer_squared.tasks.get_task`,
    or any class with the members of :class:`~transformer_squared.tasks.TaskProtocol`).
    ``model``/``tokenizer``: an already loaded model (default: ``config.model``).
    """
    from .tasks.generic import check_domain, prepare_task, stamp_domain
    from .training import TrainConfig
    from .training import train as _train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise T2Error(f"t2.train: unknown option {unknown[0]!r}; TrainConfig has: {', '.join(sorted(fields))}")
    if isinstance(task, str):
        options["task"], task = task, None
    if task is not None:
        options.setdefault("task", str(task.name))
        src = getattr(task, "source", None)
        options.setdefault("source", str(getattr(src, "label", src if src is not None else "python")))
        if config is None and "out" not in options:
            options["out"] = os.path.join("runs", str(task.name))
    config = TrainConfig(**options) if config is None else dataclasses.replace(config, **options)
    if task is not None:
        prepare_task(task)
        domain = getattr(task, "expert_domain", None)
        warning = check_domain(domain) if domain else None
        if warning:
            log.warning("%s", warning)
    result = _train(config, model=model, tokenizer=tokenizer, task=task, on_step=on_step)
    if task is not None and int(os.environ.get("RANK", "0")) == 0:
        stamp_domain(result.out, task)
    return result


__all__ = ["train"]
