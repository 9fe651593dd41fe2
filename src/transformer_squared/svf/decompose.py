"""The SVD side of SVF: weight fingerprints, the thin SVD of a target, and its on-disk cache.

Decomposing is the one expensive step of wrapping a model (seconds for the default model,
minutes for 8B ones); the second start with the same weights reads the factors instead, from
``cache_dir("svd")/<fingerprint>.safetensors`` (keyed by a fingerprint of the target weights).
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import T2Error
from ..fileio import atomic_path
from ..paths import cache_dir
from .layer import Conv1D, target_weight


def weight_fingerprint(weight: torch.Tensor) -> str:
    """A short, stable hash of a tensor's values (dtype and shape included)."""
    t = weight.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def compute_svd(weight_out_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Thin SVD in float32: returns σ, the square factor Q and which side it belongs to."""
    w = weight_out_in.detach().to(torch.float32)
    if not torch.isfinite(w).all():
        raise T2Error("a target weight contains NaN or Inf; cannot take its SVD")
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    m, n = w.shape
    if n <= m:
        return s, vh.t().contiguous(), "in"
    return s, u.contiguous(), "out"


def factors(
    model: nn.Module, names: list[str], fingerprint: str, cache: bool = True, progress: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor, str]]:
    """(σ, Q, side) on the CPU for each named target of ``model``, read from the cache when ``cache``."""
    if cache:
        cached = load_factors(fingerprint, names)
        if cached is not None:
            return cached
    from tqdm.auto import tqdm

    out: dict[str, tuple[torch.Tensor, torch.Tensor, str]] = {}
    for name in tqdm(names, desc="SVD", disable=not progress, unit="matrix"):
        module = model.get_submodule(name)
        weight = target_weight(module)
        sigma, q, side = compute_svd(weight.t() if isinstance(module, Conv1D) else weight)
        out[name] = (sigma.cpu(), q.cpu(), side)
    if cache:
        save_factors(fingerprint, out)
    return out


# --------------------------------------------------------------------------- the on-disk cache


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
