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

Files: ``config.py`` (:class:`Parameterization`, the paths), ``layer.py`` (:class:`SVFLinear`),
``targets.py`` (which modules are adapted), ``decompose.py`` (fingerprints, SVD and its on-disk
cache), ``model.py`` (:class:`SVFModel`, the one owner of the z vectors).
"""

from .config import PATHS, Parameterization
from .decompose import compute_svd, weight_fingerprint
from .layer import SVFLinear
from .model import SVFModel
from .targets import find_targets

__all__ = ["PATHS", "Parameterization", "SVFLinear", "SVFModel", "compute_svd", "find_targets", "weight_fingerprint"]
