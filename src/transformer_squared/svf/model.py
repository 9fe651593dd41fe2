"""SVFModel: wraps a causal LM in place so chosen weights are adapted by SVF vectors, and owns their state.

Wrapping finds the targets (:mod:`.targets`), takes their SVD (:mod:`.decompose`, cached on disk) and
swaps each target for an :class:`~.layer.SVFLinear`. The z vectors are set only through this class
(:meth:`SVFModel.apply`, :meth:`SVFModel.load_state`, :meth:`SVFModel.reset`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import T2Error
from .config import PATHS, Parameterization
from .decompose import factors, weight_fingerprint
from .layer import Conv1D, SVFLinear, target_weight
from .targets import find_targets

if TYPE_CHECKING:  # pragma: no cover
    from ..experts import Expert


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


class SVFModel:
    """Wraps a Hugging Face causal LM in place so chosen weights are adapted by SVF vectors.

    At init the wrapped model computes exactly what the base model did. Only the z vectors
    are trainable (every base parameter is frozen). Calling the wrapper calls the model.

    Args:
        model: any ``torch.nn.Module`` with Linear / Conv1D layers (a transformers causal LM).
        targets: ``"mlp"`` (default, the paper), ``"attn"``, ``"all-linear"`` or regexes.
        parameterization: ``"direct"`` (g = z) or ``"sigmoid"`` (reference code), or a
            :class:`Parameterization`.
        path: ``"merged"`` or ``"factored"`` forward (same result; see the package docstring).
        cache: reuse SVD factors from the on-disk cache keyed by the weights' fingerprint.
        progress: show a progress bar while decomposing.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: str | Sequence[str] = "mlp",
        parameterization: str | dict | Parameterization = "direct",
        path: str = "merged",
        cache: bool = True,
        progress: bool = False,
    ) -> None:
        if any(isinstance(m, SVFLinear) for m in model.modules()):
            raise T2Error("this model is already wrapped by SVFModel; use the existing wrapper")
        if path not in PATHS:
            raise T2Error(f"unknown path {path!r}; use one of {', '.join(PATHS)}")
        self.model = model
        self.target_spec = targets if isinstance(targets, str) else list(targets)
        self.parameterization = Parameterization.from_any(parameterization)
        names = find_targets(model, targets)
        for p in model.parameters():
            p.requires_grad_(False)
        fingerprints = {n: weight_fingerprint(target_weight(model.get_submodule(n))) for n in names}
        self.matrix_fingerprints = fingerprints
        self.fingerprint = hashlib.sha256("".join(f"{n}:{fp};" for n, fp in fingerprints.items()).encode()).hexdigest()[
            :16
        ]
        svd = factors(model, names, self.fingerprint, cache, progress)
        self.layers: dict[str, SVFLinear] = {}
        for name in names:
            base = model.get_submodule(name)
            sigma, q, side = svd[name]
            device = target_weight(base).device
            layer = SVFLinear(base, sigma.to(device), q.to(device), side, self.parameterization, path)
            parent, child = _parent(model, name)
            setattr(parent, child, layer)
            self.layers[name] = layer
        self._path = path

    # -- calling --------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    # -- parameters -----------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """The trainable z vectors, in target order."""
        return [layer.z for layer in self.layers.values()]

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, layer in self.layers.items():
            yield name, layer.z

    def num_trainable_parameters(self) -> int:
        return sum(layer.z.numel() for layer in self.layers.values())

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in PATHS:
            raise T2Error(f"unknown path {value!r}; use one of {', '.join(PATHS)}")
        self._path = value
        for layer in self.layers.values():
            layer.path = value
            if value == "factored":
                layer.clear_cache()

    @contextlib.contextmanager
    def use_path(self, value: str) -> Iterator[None]:
        old = self.path
        self.path = value
        try:
            yield
        finally:
            self.path = old

    # -- experts --------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The current z vectors (detached copies, float32, CPU)."""
        return {n: layer.z.detach().to("cpu", torch.float32).clone() for n, layer in self.layers.items()}

    @classmethod
    def from_expert(cls, model: nn.Module, expert: Expert, **kwargs: Any) -> SVFModel:
        """Wrap ``model`` the way ``expert`` was made: its targets and parameterization (from expert.json)."""
        return cls(model, targets=expert.meta.get("targets", "mlp"), parameterization=expert.parameterization, **kwargs)

    def to_expert(self, name: str = "expert", **meta) -> Expert:
        """Snapshot the current z vectors as an :class:`~transformer_squared.experts.Expert`."""
        from ..experts import Expert

        return Expert.from_svf(self, name=name, **meta)

    def apply(self, expert: Expert, strict: bool = True) -> None:
        """Load an expert's (or a mixture's) z vectors into the model.

        ``strict=False`` allows an expert made on another model when every shape matches
        (cross-model transfer); names are then paired in layer order.
        """
        self._write_z(expert.check_compatible(self, strict=strict))
        self.active = expert

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load z vectors as :meth:`state` returns them (one per target, by name); ``active`` is kept.

        The one way to set z from outside (a checkpoint, a best-so-far snapshot): nothing else
        writes the layers' z vectors.
        """
        if set(state) != set(self.layers):
            raise T2Error("the saved z vectors do not match this model's SVF targets")
        self._write_z(state)

    def _write_z(self, z: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.z.copy_(z[name].to(layer.z.device, layer.z.dtype))

    def reset(self) -> None:
        """Back to the identity (every z at its init value)."""
        with torch.no_grad():
            for layer in self.layers.values():
                layer.z.fill_(self.parameterization.init)
                layer.row_g = None
        self.active = None

    active: Expert | None = None

    @contextlib.contextmanager
    def applied(self, expert: Expert, strict: bool = True) -> Iterator[None]:
        """:meth:`apply` ``expert`` inside the block; the previous z vectors and ``active`` come back after."""
        saved, active = self.state(), self.active
        self.apply(expert, strict=strict)
        try:
            yield
        finally:
            self._write_z(saved)
            self.active = active

    def weights_for(self, experts: Sequence[Expert | None]) -> contextlib.AbstractContextManager:
        """The weights for one batch whose row i wants ``experts[i]`` (``None``: the base weights).

        When every row wants the same expert the batch runs dense: the base weights
        (:meth:`disabled`) or that expert merged (:meth:`applied`, the caller's z restored after),
        the fastest path for a fixed z. Otherwise each row carries its own multiplier through the
        factored path (:meth:`rows`).
        """
        if not experts:
            raise T2Error("weights_for needs one entry (an expert or None) per row")
        first = experts[0]
        if all(e is first for e in experts):
            return self.disabled() if first is None else self.applied(first)
        return self.rows(experts)

    def merged_state_dict(self, expert: Expert | None = None, strict: bool = True) -> dict[str, torch.Tensor]:
        """The wrapped model's state dict with each target weight replaced by W' (no z entries).

        W' is for ``expert`` (the current z when None). It loads into the plain, unwrapped
        architecture (``save_pretrained(state_dict=...)``); the model itself is not changed.
        """
        if expert is not None:
            with self.applied(expert, strict=strict):
                return self.merged_state_dict()
        state = {k: v for k, v in self.model.state_dict().items() if not k.endswith(".z")}
        with torch.no_grad():
            for name, layer in self.layers.items():
                w = layer.merged_weight()
                state[f"{name}.weight"] = (w.t() if layer.transposed else w).contiguous()
        return state

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model (original weights, same object, nothing copied) inside the block."""
        old = {n: layer.enabled for n, layer in self.layers.items()}
        for layer in self.layers.values():
            layer.enabled = False
        try:
            yield
        finally:
            for n, layer in self.layers.items():
                layer.enabled = old[n]

    @contextlib.contextmanager
    def rows(self, experts: Sequence[Expert | None]) -> Iterator[None]:
        """Give each row of the next batch its own expert (``None`` = base weights).

        Inside the block every SVF layer takes the factored path with a per-row multiplier,
        so one forward / ``generate`` serves a batch that mixes experts. A single entry applies
        to every row of any batch (it broadcasts).
        """
        zs = [None if e is None else e.check_compatible(self, strict=True) for e in experts]
        for name, layer in self.layers.items():
            rows = []
            for z in zs:
                if z is None:
                    rows.append(torch.ones(layer.rank, device=layer.sigma.device))
                else:
                    zz = z[name].to(layer.sigma.device, torch.float32)
                    rows.append(self.parameterization.multiplier(zz, layer.sigma))
            layer.row_g = torch.stack(rows)
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.row_g = None

    def unwrap(self) -> nn.Module:
        """Put the original modules back (the model as it was before wrapping) and return it."""
        for name, layer in self.layers.items():
            parent, child = _parent(self.model, name)
            base = Conv1D.__new__(Conv1D) if layer.transposed else nn.Linear.__new__(nn.Linear)
            nn.Module.__init__(base)
            base.weight, base.bias = layer.weight, layer.bias
            if layer.transposed:
                base.nx, base.nf = layer.in_features, layer.out_features
            else:
                base.in_features, base.out_features = layer.in_features, layer.out_features
            setattr(parent, child, base)
        self.layers = {}
        return self.model

    def __repr__(self) -> str:
        return (
            f"SVFModel({type(self.model).__name__}, targets={self.target_spec!r}, "
            f"matrices={len(self.layers)}, trainable={self.num_trainable_parameters():,}, "
            f"parameterization={self.parameterization.kind}, path={self.path})"
        )
