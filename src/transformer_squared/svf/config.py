"""SVF's pure configuration: how z becomes the singular-value multiplier, and the forward paths."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import T2Error

# The two forward paths of an SVF layer (same result; see the package docstring).
PATHS = ("merged", "factored")


@dataclass(frozen=True)
class Parameterization:
    """How z maps to the singular-value multiplier g(z).

    * ``direct`` (the paper): g = z, z starts at 1.
    * ``sigmoid`` (the reference code): m = sigmoid(z)·max_mult, rescaled so that Σσ is
      preserved, g = m · Σσ / Σ(σ ⊙ m); z starts at ``init_value`` (0.1).
    """

    kind: str = "direct"
    max_mult: float = 1.0
    init_value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("direct", "sigmoid"):
            raise T2Error(f"unknown parameterization {self.kind!r}; use 'direct' or 'sigmoid'")
        if self.max_mult <= 0:
            raise T2Error("max_mult must be positive")

    @property
    def init(self) -> float:
        if self.init_value is not None:
            return float(self.init_value)
        return 1.0 if self.kind == "direct" else 0.1

    def multiplier(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """g(z) for a vector z (r,) or a batch of rows (B, r)."""
        if self.kind == "direct":
            return z
        m = torch.sigmoid(z) * self.max_mult
        return m * (sigma.sum() / (m * sigma).sum(dim=-1, keepdim=True))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "max_mult": self.max_mult, "init_value": self.init}

    @classmethod
    def from_any(cls, value: str | dict | Parameterization) -> Parameterization:
        if isinstance(value, Parameterization):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        return cls(**value)
