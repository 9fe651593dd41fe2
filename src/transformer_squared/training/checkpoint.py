"""Training checkpoints: one folder, written whole or not at all, that lets ``t2 train --resume`` continue.

A checkpoint folder holds

* ``trainable.safetensors``: the trained weights (SVF z vectors or LoRA matrices), by name;
* ``best.safetensors``: the weights with the best validation accuracy so far (when there is one);
* ``optimizer.pt``: optimiser and LR-scheduler state (``torch.load(weights_only=True)`` safe);
* ``rng.pt``: the python / numpy / torch (and CUDA) random states;
* ``state.json``: step, position in the data order, best validation so far, the config, the
  model fingerprint and the task. It is written last: a folder without it is not a checkpoint.

Writing goes to a hidden temp folder beside the target which is then renamed into place; the
previous checkpoint is moved aside first and deleted last, so a kill -9 at any moment leaves
either the old or the new checkpoint readable (:func:`find_checkpoint` looks at both).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import T2Error
from ..fileio import atomic_path, write_json

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    folder: Path
    state: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) random states, in a ``weights_only``-loadable form."""
    import numpy as np

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy global generator (MT19937) always gives the tuple form
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np_state[1].astype("int64")),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: str | os.PathLike,
    *,
    state: dict[str, Any],
    trainable: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
) -> Path:
    """Write a checkpoint folder atomically (temp folder, then rename) and return its path."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f"{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _save_tensors(tmp / "trainable.safetensors", trainable)
        if best is not None:
            _save_tensors(tmp / "best.safetensors", best)
        with atomic_path(tmp / "optimizer.pt") as t:
            torch.save({"optimizer": optimizer, "scheduler": scheduler}, t)
        with atomic_path(tmp / "rng.pt") as t:
            torch.save(rng_state(), t)
        write_json(tmp / STATE_NAME, {"format_version": FORMAT_VERSION, **state})
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The complete checkpoint at ``path`` (a checkpoint folder or a training ``--out`` folder), or None.

    After a kill during the swap only ``<name>.old`` may be complete; it is used then.
    """
    path = Path(path)
    candidates = [path, path.with_name(path.name + ".old")]
    if path.name != CHECKPOINT_DIR:
        candidates = [path / CHECKPOINT_DIR, path / f"{CHECKPOINT_DIR}.old", *candidates]
    for c in candidates:
        if (c / STATE_NAME).is_file() and (c / "trainable.safetensors").is_file():
            return c
    return None


def load_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder; a damaged one is a T2Error that says so."""
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_NAME).read_text(encoding="utf-8"))
        trainable = load_file(str(folder / "trainable.safetensors"))
        best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").is_file() else None
        opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:  # JSONDecodeError is a ValueError
        raise T2Error(
            f"checkpoint {str(folder)!r} is damaged ({str(exc).splitlines()[0]}); "
            "start again without --resume (add --overwrite)"
        ) from None
    if state.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise T2Error(f"checkpoint {str(folder)!r} was written by a newer transformer_squared; upgrade")
    return Checkpoint(
        folder=folder,
        state=state,
        trainable=trainable,
        best=best,
        optimizer=opt["optimizer"],
        scheduler=opt["scheduler"],
        rng=rng,
    )
