"""Singular Value Fine-tuning (SVF): rescale the singular values of chosen weight matrices.

For a target weight W (m×n, r = min(m, n)) with thin SVD W = U diag(σ) Vᵀ, an expert is one
vector z of length r and the adapted weight is W' = U diag(σ ⊙ g(z)) Vᵀ, where g is the
parameterisation's multiplier (see :class:`Parameterization`).

How it is computed here. Because U diag(σ) = W V and diag(σ) Vᵀ = Uᵀ W, the same W' is

* ``W + W V diag(g − 1) Vᵀ`` when n ≤ m (V is square, r×r), or
* ``W + U diag(g − 1) Uᵀ W`` when m < n (U is square, r×r),

so each layer keeps the frozen base W, σ and only the *square* factor Q (r×r); the other
factor is never stored. This has three consequences we rely on: the identity at init is exact
(g = 1 gives a zero update, not a recomposed W with rounding error), ``disabled()`` needs no
copy of the model (W is still there), and memory grows by r² per matrix instead of r·(m+n).

Two forward paths give the same result:

* ``merged``: build W' once and run one dense matmul (the fast path when z is fixed: it is
  cached until z changes, e.g. for generation);
* ``factored``: apply ``x ↦ x + ((x Q) ⊙ (g − 1)) Qᵀ`` on the square side around the dense W,
  never forming W' or a dense gradient; each row of a batch may carry its own g
  (mixed-expert batches).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .errors import T2Error

if TYPE_CHECKING:  # pragma: no cover
    from .experts import Expert

try:  # GPT-2 style Conv1D: weight is (in, out), y = x W + b
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment,misc]

PATHS = ("merged", "factored")

# Names of MLP and attention projections across common architectures (Llama/Qwen/Mistral,
# GPT-2, GPT-NeoX, Phi, Falcon, OPT ...). Presets only ever select linear layers.
_MLP_CONTAINERS = re.compile(r"(^|\.)(mlp|feed_forward|ffn|block_sparse_moe)(\.|$)")
_ATTN_CONTAINERS = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)")
_OPT_MLP_LEAVES = re.compile(r"(^|\.)layers\.\d+\.(fc1|fc2)$")


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


def weight_fingerprint(weight: torch.Tensor) -> str:
    """A short, stable hash of a tensor's values (dtype and shape included)."""
    t = weight.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class SVFLinear(nn.Module):
    """A Linear / Conv1D whose singular values are scaled by a learnable vector ``z``.

    Keeps the original (frozen) ``weight`` and ``bias`` under their usual names, so the
    wrapped model's state dict is unchanged; adds ``sigma``, the square factor ``q`` (both
    non-persistent buffers) and the parameter ``z``.
    """

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
        self.transposed = isinstance(base, Conv1D) if Conv1D else False
        self.weight = base.weight
        self.bias = base.bias
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
        self.z = nn.Parameter(torch.full((r,), parameterization.init, dtype=torch.float32,
                                         device=self.weight.device))
        # Per-row g for mixed-expert batches: (B, r) or None. Set by SVFModel.rows().
        self.row_g: torch.Tensor | None = None
        self._merged: torch.Tensor | None = None
        self._merged_key: tuple | None = None

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
            self._merged = None  # free the old one before building the new
            with torch.no_grad():
                self._merged = self.merged_weight()
            self._merged_key = key
        return self._merged

    def clear_cache(self) -> None:
        self._merged = None
        self._merged_key = None

    # -- forward --------------------------------------------------------------------------
    def _dense(self, x: torch.Tensor, w_out_in: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w_out_in, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self._dense(x, self.base_weight())
        if self.row_g is not None:
            return self._factored(x, self.row_g - 1)
        if self.path == "factored":
            return self._factored(x, self.multiplier() - 1)
        needs_grad = torch.is_grad_enabled() and self.z.requires_grad
        w = self.merged_weight() if needs_grad else self._cached_merged_weight()
        return self._dense(x, w)

    def _factored(self, x: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
        """y = x W'ᵀ + b computed as a rank-r transform around the dense base layer.

        ``g1`` is (r,) or (B, r) for per-row multipliers (x is then (B, T, n)).
        """
        q = self.q.to(x.dtype)
        g1 = g1.to(x.dtype)
        if g1.dim() == 2 and x.dim() == 3:
            g1 = g1[:, None, :]
        if self.side == "in":
            x = x + ((x @ q) * g1) @ q.t()
            return self._dense(x, self.base_weight())
        h = F.linear(x, self.base_weight())
        h = h + ((h @ q) * g1) @ q.t()
        return h + self.bias if self.bias is not None else h

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, side={self.side}, "
                f"path={self.path}, parameterization={self.parameterization.kind}")


# ---------------------------------------------------------------------------------------
# Finding targets
# ---------------------------------------------------------------------------------------
def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def _output_layer_names(model: nn.Module) -> set[str]:
    names = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if module is out or name.split(".")[-1] in ("lm_head", "embed_out", "score"):
            names.add(name)
    return names


def find_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Names of the modules SVF adapts: ``"mlp"``, ``"attn"``, ``"all-linear"`` or regexes.

    A regex is matched against the full module name (``re.fullmatch``); a plain word also
    matches any module whose last name component equals it (``"gate_proj"``).
    """
    excluded = _output_layer_names(model)
    modules = dict(model.named_modules())
    if isinstance(targets, str) and targets in ("mlp", "attn", "all-linear"):
        found = []
        for name, module in modules.items():
            if not _is_linear(module) or name in excluded:
                continue
            if targets == "all-linear":
                ok = True
            elif targets == "mlp":
                ok = bool(_MLP_CONTAINERS.search(name) or _OPT_MLP_LEAVES.search(name))
            else:
                ok = bool(_ATTN_CONTAINERS.search(name))
            if ok:
                found.append(name)
        if not found:
            raise T2Error(
                f"targets={targets!r} matched no linear layer in {type(model).__name__}; "
                "pass a list of regexes for the module names (see `model.named_modules()`)"
            )
        return found
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise T2Error("targets is empty; use 'mlp', 'attn', 'all-linear' or a list of regexes")
    found = []
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise T2Error(f"target pattern {pattern!r} is not a valid regex: {exc}") from None
        hits = [n for n in modules if n and (rx.fullmatch(n) or n.split(".")[-1] == pattern)]
        if not hits:
            raise T2Error(f"target pattern {pattern!r} matched no module in {type(model).__name__}")
        for name in hits:
            module = modules[name]
            if not _is_linear(module):
                if isinstance(module, SVFLinear):
                    raise T2Error(f"module {name!r} is already wrapped by SVF")
                raise T2Error(
                    f"target {name!r} is a {type(module).__name__}; SVF supports torch.nn.Linear "
                    "and transformers Conv1D only (narrow the pattern)"
                )
            if name not in found:
                found.append(name)
    return found


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


# ---------------------------------------------------------------------------------------
# The model wrapper
# ---------------------------------------------------------------------------------------
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
        path: ``"merged"`` or ``"factored"`` forward (same result; see the module docstring).
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
        fingerprints = {n: weight_fingerprint(model.get_submodule(n).weight) for n in names}
        self.matrix_fingerprints = fingerprints
        self.fingerprint = hashlib.sha256(
            "".join(f"{n}:{fp};" for n, fp in fingerprints.items()).encode()
        ).hexdigest()[:16]
        factors = self._factors(names, cache, progress)
        self.layers: dict[str, SVFLinear] = {}
        for name in names:
            base = model.get_submodule(name)
            sigma, q, side = factors[name]
            device = base.weight.device
            layer = SVFLinear(base, sigma.to(device), q.to(device), side, self.parameterization, path)
            parent, child = _parent(model, name)
            setattr(parent, child, layer)
            self.layers[name] = layer
        self._path = path

    # -- SVD with an on-disk cache --------------------------------------------------------
    def _factors(self, names: list[str], cache: bool, progress: bool) -> dict:
        from .svd_cache import load_factors, save_factors

        if cache:
            cached = load_factors(self.fingerprint, names)
            if cached is not None:
                return cached
        from tqdm.auto import tqdm

        out = {}
        for name in tqdm(names, desc="SVD", disable=not progress, unit="matrix"):
            module = self.model.get_submodule(name)
            w = module.weight.t() if (Conv1D and isinstance(module, Conv1D)) else module.weight
            out[name] = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in compute_svd(w))
        if cache:
            save_factors(self.fingerprint, out)
        return out

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

    def to_expert(self, name: str = "expert", **meta) -> Expert:
        """Snapshot the current z vectors as an :class:`~transformer_squared.experts.Expert`."""
        from .experts import Expert

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
            base = (Conv1D.__new__(Conv1D) if layer.transposed else nn.Linear.__new__(nn.Linear))
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
        return (f"SVFModel({type(self.model).__name__}, targets={self.target_spec!r}, "
                f"matrices={len(self.layers)}, trainable={self.num_trainable_parameters():,}, "
                f"parameterization={self.parameterization.kind}, path={self.path})")
