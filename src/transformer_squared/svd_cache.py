"""On-disk cache of SVD factors, keyed by a fingerprint of the target weights.

Decomposing is the one expensive step of wrapping a model (seconds for the default model,
minutes for 8B ones); the second start with the same weights reads the factors instead.
"""

from __future__ import annotations

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .fileio import atomic_path
from .paths import cache_dir


def _path(fingerprint: str):
    return cache_dir("svd") / f"{fingerprint}.safetensors"


def load_factors(fingerprint: str, names: list[str]) -> dict | None:
    """The cached (σ, Q, side) per name, or None when absent or unreadable (then recomputed)."""
    path = _path(fingerprint)
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            sides = json.loads(f.metadata()["sides"])
        return {n: (tensors[f"{n}.sigma"], tensors[f"{n}.q"], sides[n]) for n in names}
    except (SafetensorError, KeyError, OSError, ValueError, json.JSONDecodeError):
        return None


def save_factors(fingerprint: str, factors: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    sides = {}
    for name, (sigma, q, side) in factors.items():
        tensors[f"{name}.sigma"] = sigma.contiguous()
        tensors[f"{name}.q"] = q.contiguous()
        sides[name] = side
    with atomic_path(_path(fingerprint)) as tmp:
        save_file(tensors, str(tmp), metadata={"sides": json.dumps(sides)})
