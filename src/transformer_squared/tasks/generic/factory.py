"""Making a generic task from options (``get_task("generic", ...)``) and the checks the CLI runs around it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...errors import T2Error
from ..base import Task
from .data import UserData
from .reward import RewardTask
from .task import CHECKS, GenericChoiceTask, GenericTask

# Domain labels of the shipped experts and of the first pass's fixed categories: a user task with
# one of these would collide with them when routing (AdaptiveModel refuses two experts of one domain).
SHIPPED_DOMAINS = ("math", "code", "reasoning", "classify")


def generic_task(
    source: Any,
    *,
    reward_correct: float = 1.0,
    reward_wrong: float = -1.0,
    reward: Callable | str | None = None,
    check: str | None = None,
    **options: Any,
) -> Task:
    """The generic task for ``source`` (what ``get_task("generic", source=..., ...)`` returns).

    ``source``: a .jsonl/.json/.csv/.tsv path, a Hub dataset id (``owner/name``, loaded with
    ``datasets.load_dataset``), a ``datasets.Dataset``/``DatasetDict``, a list of dicts, or a dict
    of split name → rows. See the module docstring for the options.
    """
    if source is None or (isinstance(source, str) and source in ("offline", "hub")):
        raise T2Error("the generic task needs data: --data FILE.jsonl|FILE.csv|HUB_ID (Python: source=...)")
    if check is not None and check not in CHECKS:
        raise T2Error(f"--check {check!r} is not one of: {', '.join(CHECKS)}")
    try:
        if reward is not None:
            if check == "choice":
                raise T2Error("--check choice and --reward are two ways to score; give one")
            task: Task = RewardTask(
                source, reward_correct, reward_wrong, reward=reward, check=check or "normalized", **options
            )
        elif check == "choice":
            task = GenericChoiceTask(source, reward_correct, reward_wrong, **options)
        else:
            task = GenericTask(source, reward_correct, reward_wrong, check=check or "normalized", **options)
    except TypeError as exc:
        raise T2Error(f"generic task: {exc}".replace("__init__() ", "")) from exc
    return task


def check_domain(domain: str, experts_domains: Sequence[str] = ()) -> str | None:
    """A warning line when ``domain`` collides with a shipped expert's (or another given) domain, else None."""
    taken = set(SHIPPED_DOMAINS) | set(experts_domains)
    if domain in taken:
        return (
            f"domain {domain!r} is also the domain of a shipped expert: routing cannot tell them apart and "
            f"t2 eval --adapt refuses two experts of one domain; pass --domain with a name of your own"
        )
    return None


def prepare_task(task: Any) -> None:
    """Read a generic task's data and try its reward function now (T2Error: one line), before any model loads."""
    if isinstance(task, UserData):
        task.splits()
        if isinstance(task, RewardTask):
            task.check_reward()


def stamp_domain(out: str | os.PathLike, task: Any) -> None:
    """Write a generic task's domain into the expert saved in ``out`` (``expert.json``; atomic)."""
    domain = getattr(task, "expert_domain", None)
    path = Path(out) / "expert.json"
    if not domain or not path.is_file():
        return
    from ...fileio import write_json

    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("domain") != domain:
        meta["domain"] = domain
        write_json(path, meta)
