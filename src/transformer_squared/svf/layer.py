"""SVFLinear: one Linear / Conv1D whose singular values are scaled by a learnable vector z.

The layer keeps the frozen base W, σ and only the square factor Q; the merged and factored
forward paths are explained in the package docstring (:mod:`transformer_squared.svf`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Parameterization

try:  # GPT-2 style Conv1D: weight is (in, out), y = x W + b
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment,misc]  # isinstance(x, ()) is False: no module is a Conv1D


def target_weight(module: nn.Module) -> torch.Tensor:
    """The ``weight`` of a target module (an nn.Linear or Conv1D, so a Parameter).

    ``nn.Module`` types attribute access as ``Tensor | Module``; this narrows it for the type checker.
    """
    weight = module.weight
    assert isinstance(weight, torch.Tensor), f"{type(module).__name__}.weight is not a tensor"
    return weight


class SVFLinear(nn.Module):
    """A Linear / Conv1D whose singular values are scaled by a learnable vector ``z``.

    Keeps the original (frozen) ``weight`` and ``bias`` under their usual names, so the
    wrapped model's state dict is unchanged; adds ``sigma``, the square factor ``q`` (both
    non-persistent buffers) and the parameter ``z``.
    """

    # Declared for the type checker: nn.Module types registered tensors as ``Tensor | Module``.
    weight: torch.Tensor
    bias: torch.Tensor | None
    sigma: torch.Tensor
    q: torch.Tensor

    def __init__(
        self,
        base: nn.Module,
        sigma: torch.Tensor,
        q: torch.Tensor,
        side: str,
        parameterization: Parameterization,
        path: str = "merged",
    ) -> None:
        super().__init__()
        self.transposed = isinstance(base, Conv1D)
        self.weight = target_weight(base)
        bias = base.bias  # a Parameter, or None on nn.Linear(bias=False)
        assert bias is None or isinstance(bias, torch.Tensor)
        self.bias = bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.side = side  # "in": q = V (n×n); "out": q = U (m×m)
        self.parameterization = parameterization
        self.path = path
        self.enabled = True
        self.register_buffer("sigma", sigma.to(torch.float32), persistent=False)
        self.register_buffer("q", q.to(torch.float32), persistent=False)
        r = sigma.numel()
        self.z = nn.Parameter(torch.full((r,), parameterization.init, dtype=torch.float32, device=self.weight.device))
        # Per-row g for mixed-expert batches: (B, r) or None. Set by SVFModel.rows().
        self.row_g: torch.Tensor | None = None
        self._merged: torch.Tensor | None = None
        self._merged_key: tuple | None = None
        # Frozen tensors in the autocast dtype: {name: (source, key, copy)} (see _autocast_copy).
        self._casts: dict[str, tuple] = {}

    # -- shapes -------------------------------------------------------------------------
    @property
    def out_features(self) -> int:
        return self.weight.shape[1] if self.transposed else self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[0] if self.transposed else self.weight.shape[1]

    @property
    def rank(self) -> int:
        return self.sigma.numel()

    def base_weight(self) -> torch.Tensor:
        """The base weight as (out, in), whatever the module type."""
        return self.weight.t() if self.transposed else self.weight

    # -- the adapted weight ---------------------------------------------------------------
    def multiplier(self) -> torch.Tensor:
        return self.parameterization.multiplier(self.z, self.sigma)

    def delta(self, g_minus_1: torch.Tensor) -> torch.Tensor:
        """W' − W as an (out, in) matrix in the factors' dtype (float32), for g given as g − 1."""
        w = self.base_weight().to(self.q.dtype)
        if self.side == "in":
            return ((w @ self.q) * g_minus_1) @ self.q.t()
        return self.q @ (g_minus_1[:, None] * (self.q.t() @ w))

    def merged_weight(self) -> torch.Tensor:
        """W' (out, in) in the base weight's dtype, differentiable w.r.t. z."""
        w = self.base_weight()
        g1 = self.multiplier() - 1
        return (w.to(self.q.dtype) + self.delta(g1)).to(w.dtype)

    def _cached_merged_weight(self) -> torch.Tensor:
        key = (self.z._version, self.z.data_ptr(), self.parameterization)
        if self._merged is None or self._merged_key != key:
            self._merged = None  # free the old one (and its autocast copy) before building the new
            self._casts.pop("merged", None)
            with torch.no_grad():
                self._merged = self.merged_weight()
            self._merged_key = key
        return self._merged

    def clear_cache(self) -> None:
        """Drop the cached W' and its autocast copy (the copies of q and the base weight follow their tensors)."""
        self._merged = None
        self._merged_key = None
        self._casts.pop("merged", None)

    def _autocast_copy(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``t`` (a tensor that does not train) as autocast would cast it for a matmul with ``x``, made once.

        Autocast re-casts a float32 operand at every call; for ``q``, the frozen base weight and
        the cached W' that cast is the same each time, so it is kept until ``t`` changes
        (:func:`~transformer_squared.models.cast_once`). Outside autocast, or for other dtypes,
        ``t`` is returned as it is. Either way the results are the same, bit for bit.
        """
        kind = x.device.type
        if not torch.is_autocast_enabled(kind) or t.dtype != torch.float32 or t.is_inference():
            return t  # (an inference-mode tensor has no version counter to key a copy on: autocast casts it)
        from ..models import cast_once

        return cast_once(self._casts, name, t, torch.get_autocast_dtype(kind))

    def _base_weight_for(self, x: torch.Tensor) -> torch.Tensor:
        """The (out, in) base weight for a matmul with ``x`` (its autocast copy under autocast)."""
        w = self._autocast_copy("weight", self.weight, x)
        return w.t() if self.transposed else w

    # -- forward --------------------------------------------------------------------------
    def _dense(self, x: torch.Tensor, w_out_in: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w_out_in, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self._dense(x, self._base_weight_for(x))
        if self.row_g is not None:
            return self._factored(x, self.row_g - 1)
        if self.path == "factored":
            return self._factored(x, self.multiplier() - 1)
        needs_grad = torch.is_grad_enabled() and self.z.requires_grad
        if needs_grad:
            return self._dense(x, self.merged_weight())
        return self._dense(x, self._autocast_copy("merged", self._cached_merged_weight(), x))

    def _factored(self, x: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
        """y = x W'ᵀ + b computed as a rank-r transform around the dense base layer.

        ``g1`` is (r,) or (B, r) for per-row multipliers (x is then (B, T, n)).
        """
        q = self._autocast_copy("q", self.q, x)
        q = q if q is not self.q else q.to(x.dtype)
        g1 = g1.to(x.dtype)
        if g1.dim() == 2 and x.dim() == 3:
            g1 = g1[:, None, :]
        w = self._base_weight_for(x)
        if self.side == "in":
            x = x + ((x @ q) * g1) @ q.t()
            return self._dense(x, w)
        h = F.linear(x, w)
        h = h + ((h @ q) * g1) @ q.t()
        return h + self.bias if self.bias is not None else h

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, side={self.side}, "
            f"path={self.path}, parameterization={self.parameterization.kind}"
        )
