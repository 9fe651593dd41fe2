"""The ``--out`` folder of a run: what it holds, refusing or replacing an earlier run, resuming one, the best weights.

A run's folder holds the best weights (an expert folder for SVF, a PEFT adapter folder for
LoRA), ``metrics.jsonl``, ``train_curve.png``, ``train_config.json``, ``reward_errors.jsonl``
when a reward function raised, and ``checkpoint/`` (:mod:`.checkpoint`).

* A new run refuses a folder that holds a run or an expert unless ``overwrite``; then the
  earlier run's files are deleted (never anything else in the folder).
* ``resume`` continues from the checkpoint and refuses one made by another method, model, task
  or with other options that change what is computed (:data:`~.config.TRAJECTORY_FIELDS`).
* Validation keeps the weights with the best val accuracy; ties go to the higher reference
  log-likelihood (:func:`is_better`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import T2Error
from .checkpoint import CHECKPOINT_DIR, find_checkpoint
from .config import TRAJECTORY_FIELDS, TrainConfig
from .distributed import DistInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.base import TaskProtocol

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "train_curve.png"
CONFIG_NAME = "train_config.json"
REWARD_ERRORS_NAME = "reward_errors.jsonl"


def owned_files(out: Path) -> list[Path]:
    """The files and folders a run writes besides its weights (what ``overwrite`` deletes)."""
    return [
        out / n
        for n in (METRICS_NAME, CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old", PLOT_NAME, REWARD_ERRORS_NAME, CONFIG_NAME)
    ]


def check_out(config: TrainConfig) -> Path | None:
    """Before anything is loaded: the checkpoint to resume from, or check that ``out`` is free."""
    out = Path(config.out)
    where = config.resume_dir
    if where is not None:
        found = find_checkpoint(where)
        if found is None:
            raise T2Error(
                f"no checkpoint in {str(where)!r} (a run writes its first one after "
                "--checkpoint-every steps); start a new run without --resume (--overwrite if "
                "the folder holds an earlier run)"
            )
        return found
    names = (METRICS_NAME, CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old", "expert.json", "adapter_config.json")
    existing = [out / n for n in names if (out / n).exists()]
    if existing and not config.overwrite:
        raise T2Error(
            f"{str(out)!r} already holds a training run or an expert ({existing[0].name}); pass "
            "--resume to continue the run, --overwrite to replace it, or another --out"
        )
    return None


def clear_previous_run(out: Path, dist: DistInfo) -> None:
    """Delete an earlier run's files from ``out`` (rank 0, between barriers)."""
    existing = [p for p in owned_files(out) if p.exists()]
    dist.barrier()
    if existing and dist.main:
        for p in owned_files(out):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    dist.barrier()


def run_identity(config: TrainConfig, model_name: str, fingerprint: str, task: TaskProtocol) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: method, objective, base weights, task and its data."""
    src = getattr(task, "source", None)
    return {
        "method": config.method,
        "objective": config.objective,
        "model": model_name,
        "fingerprint": fingerprint,
        "task": task.name,
        "source": getattr(src, "label", str(src) if src is not None else None),
    }


def check_resume(saved: dict[str, Any], folder: Path, identity: dict[str, Any], config: TrainConfig) -> None:
    """Refuse a checkpoint (its ``state.json`` as ``saved``) that another run would continue wrongly."""
    where = str(folder)
    if saved.get("method") != identity["method"]:
        raise T2Error(
            f"checkpoint {where!r} trains {saved.get('method')!r}, not {identity['method']!r}; "
            f"resume with --method {saved.get('method')} or use another --out"
        )
    if saved.get("fingerprint") != identity["fingerprint"]:
        raise T2Error(
            f"checkpoint {where!r} was made with model {saved.get('model')!r}, not {identity['model']!r} "
            "(the weights differ); resume with the same --model/--targets or use another --out"
        )
    if saved.get("task") != identity["task"] or saved.get("source") != identity["source"]:
        raise T2Error(
            f"checkpoint {where!r} trains task {saved.get('task')!r} (source {saved.get('source')!r}), "
            f"not {identity['task']!r} (source {identity['source']!r}); use the same --task or another --out"
        )
    options, now = saved.get("config", {}), config.to_dict()
    # an option added after the checkpoint was written had its default value then
    defaults = TrainConfig().to_dict()
    diffs = [k for k in TRAJECTORY_FIELDS if options.get(k, defaults.get(k)) != now.get(k)]
    if diffs:
        shown = ", ".join(f"--{k.replace('_', '-')} {options.get(k)!r} (now {now.get(k)!r})" for k in diffs[:3])
        raise T2Error(f"checkpoint {where!r} was made with other options: {shown}; resume with the same options")


def saved_config(config: TrainConfig) -> tuple[Path | None, dict]:
    """The ``config`` written to train_config.json by the run that ``config.resume`` continues."""
    where = config.resume_dir or Path(config.out)
    for folder in (where, where.parent):
        path = folder / CONFIG_NAME
        if path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8")).get("config")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                return path, {}
            return path, saved if isinstance(saved, dict) else {}
    return None, {}


def is_better(accuracy: float, loglik: float | None, best_val: float | None, best_loglik: float | None) -> bool:
    """Whether weights with this val accuracy (and reference log-likelihood) beat the best so far.

    Accuracy first; an equal accuracy wins with a higher reference log-likelihood (with a handful of
    val items, ties at 0% or at a few % are common); without log-likelihoods a tie keeps the earlier weights.
    """
    return (
        best_val is None
        or accuracy > best_val
        or (accuracy == best_val and loglik is not None and best_loglik is not None and loglik > best_loglik)
    )


__all__ = [
    "CONFIG_NAME",
    "METRICS_NAME",
    "PLOT_NAME",
    "REWARD_ERRORS_NAME",
    "check_out",
    "check_resume",
    "clear_previous_run",
    "is_better",
    "owned_files",
    "run_identity",
    "saved_config",
]
