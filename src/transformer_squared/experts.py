"""Experts: named sets of SVF z vectors with the metadata needed to use them safely.

On disk an expert is a folder with ``expert.safetensors`` (one float32 vector per adapted
matrix, keyed by module name) and ``expert.json`` (base model, weight fingerprints, targets,
parameterization, task, training summary) — the same shape as a PEFT adapter folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import T2Error
from .fileio import atomic_path, write_json
from .models import model_name
from .svf import Parameterization

if TYPE_CHECKING:  # pragma: no cover
    from .svf import SVFModel

FORMAT_VERSION = 1
WEIGHTS_NAME = "expert.safetensors"
CONFIG_NAME = "expert.json"


@dataclass
class Expert:
    """z vectors (module name → 1-D float32 tensor) plus metadata.

    ``meta`` keys written by this package: ``name``, ``base_model``, ``fingerprint`` (all
    target weights), ``matrix_fingerprints`` (per matrix), ``targets`` (the spec used),
    ``parameterization``, ``task``, ``training`` (a summary dict), ``mixture`` (for mixes).
    """

    z: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.z:
            raise T2Error("an expert needs at least one z vector")
        for name, vec in self.z.items():
            if vec.dim() != 1:
                raise T2Error(f"z for {name!r} must be a vector, got shape {tuple(vec.shape)}")
            if not torch.isfinite(vec).all():
                raise T2Error(f"z for {name!r} contains NaN or Inf; the expert is unusable")
        self.z = {n: v.detach().to("cpu", torch.float32).contiguous() for n, v in self.z.items()}

    # -- properties -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", "expert"))

    @property
    def parameterization(self) -> Parameterization:
        return Parameterization.from_any(self.meta.get("parameterization", "direct"))

    def num_parameters(self) -> int:
        return sum(v.numel() for v in self.z.values())

    def digest(self) -> str:
        """A short hash of the z vectors and their names: the same expert wherever its folder lives."""
        import hashlib

        h = hashlib.sha256()
        for name in sorted(self.z):
            h.update(name.encode())
            h.update(self.z[name].detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Expert({self.name!r}, matrices={len(self.z)}, parameters={self.num_parameters():,}, "
            f"task={self.meta.get('task')!r})"
        )

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_svf(cls, svf: SVFModel, name: str = "expert", **meta: Any) -> Expert:
        """Snapshot the current z of an :class:`SVFModel`."""
        info = {
            "name": name,
            "base_model": model_name(svf.model),
            "fingerprint": svf.fingerprint,
            "matrix_fingerprints": dict(svf.matrix_fingerprints),
            "targets": svf.target_spec,
            "parameterization": svf.parameterization.to_dict(),
        }
        info.update(meta)
        return cls(svf.state(), info)

    # -- checking -----------------------------------------------------------------------------
    def check_compatible(self, svf: SVFModel, strict: bool = True) -> dict[str, torch.Tensor]:
        """The z vectors keyed by the model's names, or a T2Error naming the first mismatch.

        strict: names, shapes, per-matrix weight fingerprints and parameterization must match.
        strict=False: only the count and shapes (cross-model transfer): paired by name when the
        module names are the model's, otherwise in layer order.
        """
        layers = svf.layers
        mine = list(self.z)
        if strict:
            for name in layers:
                if name not in self.z:
                    raise T2Error(
                        f"expert {self.name!r} has no vector for matrix {name!r}; it was made "
                        "with other targets or another architecture"
                    )
            extra = [n for n in mine if n not in layers]
            if extra:
                raise T2Error(
                    f"expert {self.name!r} adapts {extra[0]!r}, which this model does not "
                    "target; wrap the model with the expert's targets"
                )
            pairs = [(n, n) for n in layers]
        elif set(mine) == set(layers):  # same module names (same architecture): pair by name
            pairs = [(n, n) for n in layers]
        else:
            if len(mine) != len(layers):
                raise T2Error(
                    f"expert {self.name!r} has {len(mine)} vectors but the model has {len(layers)} target matrices"
                )
            pairs = list(zip(layers, mine, strict=True))
        fps = self.meta.get("matrix_fingerprints") or {}
        for layer_name, expert_name in pairs:
            want = layers[layer_name].rank
            got = self.z[expert_name].numel()
            if want != got:
                raise T2Error(
                    f"expert {self.name!r}: matrix {layer_name!r} has rank {want} but the "
                    f"expert's vector has length {got}; it is for another model"
                )
            if strict and fps and expert_name in fps and fps[expert_name] != svf.matrix_fingerprints[layer_name]:
                raise T2Error(
                    f"expert {self.name!r} was trained on other weights: matrix {layer_name!r} differs "
                    f"(expert base model: {self.meta.get('base_model')!r}); to use it anyway, re-key it "
                    "with `t2 transfer` (Expert.transfer) or pass --transfer (strict=False)"
                )
        if strict:
            mine_p = self.parameterization
            if mine_p.kind != svf.parameterization.kind or mine_p.max_mult != svf.parameterization.max_mult:
                raise T2Error(
                    f"expert {self.name!r} uses the {mine_p.kind!r} parameterization but the "
                    f"model is wrapped with {svf.parameterization.kind!r}"
                )
        return {layer_name: self.z[expert_name] for layer_name, expert_name in pairs}

    def transfer(self, svf: SVFModel, name: str | None = None) -> Expert:
        """This expert re-keyed for another model whose target matrices have the same shapes.

        Vectors are paired with the model's target matrices in layer order (the paper's
        cross-model transfer, Table 5). The result carries the new model's names and weight
        fingerprints, so it then applies with the usual strict checks; where it came from is
        kept under ``transferred_from``.
        """
        z = self.check_compatible(svf, strict=False)
        if self.parameterization.kind != svf.parameterization.kind:
            raise T2Error(
                f"expert {self.name!r} uses the {self.parameterization.kind!r} parameterization "
                f"but the model is wrapped with {svf.parameterization.kind!r}"
            )
        meta = {k: v for k, v in self.meta.items() if k not in ("matrix_fingerprints", "fingerprint")}
        meta.update(
            name=name or self.name,
            base_model=model_name(svf.model),
            fingerprint=svf.fingerprint,
            matrix_fingerprints=dict(svf.matrix_fingerprints),
            transferred_from={
                "base_model": self.meta.get("base_model"),
                "fingerprint": self.meta.get("fingerprint"),
                "matrices": list(self.z),
            },
        )
        return Expert(dict(z), meta)

    # -- mixing -------------------------------------------------------------------------------
    @staticmethod
    def mix(experts: Sequence[Expert], weights: Sequence[float] | torch.Tensor, name: str = "mixture") -> Expert:
        """z' = 1 + Σ_k α_k (z_k − 1): a mixture of the experts' *changes* to the base model.

        One weight per expert (K,) or per expert per matrix (K, L). α = 0 is the base model and a
        one-hot α is expert k, so the overall scale of α is never a hidden gain on every singular
        value (with z' = Σ α_k z_k, Σα = 1.1 would scale all of them by 1.1). For the sigmoid
        parameterization the same is done on sigmoid(z), relative to sigmoid(init) (the identity),
        and the result is mapped back to z.
        """
        experts = list(experts)
        if not experts:
            raise T2Error("Expert.mix needs at least one expert")
        names = list(experts[0].z)
        for e in experts[1:]:
            if list(e.z) != names or any(e.z[n].shape != experts[0].z[n].shape for n in names):
                raise T2Error(
                    f"experts {experts[0].name!r} and {e.name!r} adapt different matrices; "
                    "only experts with the same targets can be mixed"
                )
            if e.parameterization != experts[0].parameterization:
                raise T2Error(f"experts {experts[0].name!r} and {e.name!r} use different parameterizations")
        alpha = torch.as_tensor(weights, dtype=torch.float32)
        k, n_mat = len(experts), len(names)
        if alpha.dim() == 1 and alpha.numel() == k:
            alpha = alpha[:, None].expand(k, n_mat)
        elif alpha.shape != (k, n_mat):
            raise T2Error(f"mixing weights must have shape ({k},) or ({k}, {n_mat}); got {tuple(alpha.shape)}")
        if not torch.isfinite(alpha).all():
            raise T2Error("mixing weights contain NaN or Inf")
        param = experts[0].parameterization
        z = {}
        base = torch.sigmoid(torch.tensor(param.init)) if param.kind == "sigmoid" else torch.tensor(1.0)
        for j, n in enumerate(names):
            if param.kind == "direct":
                z[n] = base + sum(alpha[i, j] * (e.z[n] - base) for i, e in enumerate(experts))
            else:
                s = base + sum(alpha[i, j] * (torch.sigmoid(e.z[n]) - base) for i, e in enumerate(experts))
                z[n] = torch.logit(s.clamp(1e-6, 1 - 1e-6))
        meta = {k_: v for k_, v in experts[0].meta.items() if k_ not in ("task", "training", "name")}
        meta.update(
            name=name,
            task=None,
            mixture={
                "experts": [e.name for e in experts],
                "weights": alpha[:, 0].tolist() if bool((alpha == alpha[:, :1]).all()) else alpha.tolist(),
            },
        )
        return Expert(z, meta)

    # -- files --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``expert.safetensors`` and ``expert.json`` into ``directory`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(
                self.z, str(tmp), metadata={"format": "transformer_squared.expert", "version": str(FORMAT_VERSION)}
            )
        config = dict(self.meta)
        config["format_version"] = FORMAT_VERSION
        config["num_parameters"] = self.num_parameters()
        config["shapes"] = {n: v.numel() for n, v in self.z.items()}
        write_json(directory / CONFIG_NAME, _jsonable(config))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Expert:
        """Read an expert folder; a missing, truncated or edited file is a T2Error."""
        directory = Path(directory)
        if directory.is_file() and directory.name in (WEIGHTS_NAME, CONFIG_NAME):
            directory = directory.parent
        wfile, cfile = directory / WEIGHTS_NAME, directory / CONFIG_NAME
        if not directory.is_dir():
            raise T2Error(f"expert folder {str(directory)!r} does not exist")
        for f in (wfile, cfile):
            if not f.is_file():
                raise T2Error(f"{str(f)!r} is missing; an expert folder holds {WEIGHTS_NAME} and {CONFIG_NAME}")
        try:
            meta = json.loads(cfile.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise T2Error(f"{str(cfile)!r} is not valid JSON ({exc}); the file is damaged") from None
        if not isinstance(meta, dict):
            raise T2Error(f"{str(cfile)!r} must hold a JSON object")
        try:
            z = load_file(str(wfile))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise T2Error(f"{str(wfile)!r} is truncated or not a safetensors file ({exc})") from None
        shapes = meta.get("shapes")
        if isinstance(shapes, dict):
            if set(shapes) != set(z):
                missing = sorted(set(shapes) ^ set(z))[0]
                raise T2Error(
                    f"{str(directory)!r}: {CONFIG_NAME} and {WEIGHTS_NAME} disagree about "
                    f"matrix {missing!r}; the expert was edited or half-copied"
                )
            for n, size in shapes.items():
                if z[n].numel() != size:
                    raise T2Error(f"{str(directory)!r}: matrix {n!r} should have {size} values, found {z[n].numel()}")
            # safetensors files list tensors in sorted-name order ("layers.10" before "layers.2",
            # down_proj before gate_proj); the JSON keeps the model's layer order, which
            # cross-model transfer pairs by, so restore it.
            z = {n: z[n] for n in shapes}
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise T2Error(f"{str(directory)!r} was written by a newer transformer_squared; upgrade")
        for k in ("format_version", "num_parameters", "shapes"):
            meta.pop(k, None)
        meta.setdefault("name", directory.name)
        try:
            return cls(z, meta)
        except T2Error as exc:
            raise T2Error(f"{str(directory)!r}: {exc}") from None

    # -- the Hugging Face Hub -------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, repo_id: str | None = None) -> Path:
        """:meth:`save` plus a model card (``README.md``): a folder ready for the Hub."""
        from .fileio import write_text
        from .hub import model_card

        directory = self.save(directory)
        write_text(directory / "README.md", model_card(self, repo_id=repo_id))
        return directory

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None) -> Expert:
        """An expert from a local folder or a Hub repo id (``org/name``, fetched with huggingface_hub).

        Offline (``HF_HUB_OFFLINE=1`` or no connection) a repo in the local cache is read from it;
        one that is not fails at once with a hint.
        """
        from .hub import download_expert, is_repo_id

        path = Path(name_or_path).expanduser()
        if path.exists():
            return cls.load(path)
        if not is_repo_id(str(name_or_path)):
            raise T2Error(f"expert {str(name_or_path)!r} is neither a folder nor a Hub repo id like 'org/name'")
        folder = download_expert(str(name_or_path), revision=revision, files=(CONFIG_NAME, WEIGHTS_NAME, "README.md"))
        return cls.load(folder)

    def push_to_hub(
        self, repo_id: str, *, private: bool | None = None, token: str | None = None, commit_message: str | None = None
    ) -> str:
        """Upload this expert (with its model card) to the Hub repo ``repo_id``; the commit URL."""
        import tempfile

        from .hub import push_folder

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "expert", repo_id=repo_id)
            return push_folder(
                folder,
                repo_id,
                private=private,
                token=token,
                commit_message=commit_message or f"Upload SVF expert {self.name}",
            )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
