"""What is trained: the :class:`Policy` handles the trainer uses, for SVF (:class:`SVFPolicy`) and LoRA (:class:`LoRAPolicy`).

A policy wraps a causal LM and gives the trainer its trainable tensors, a context that runs the
*base* model (for the KL term; nothing is copied), the contexts for sampling and for the
gradient forward, and saving the weights in the method's own format: an expert folder for SVF,
a PEFT adapter folder for LoRA.

The paper compares SVF with LoRA of rank 16 (alpha 32) on the attention query and value
projections; :class:`LoRAPolicy` is that baseline, trained by the same loop (RL or SFT). Its
saved folder (``adapter_model.safetensors`` + ``adapter_config.json``) is what
``PeftModel.from_pretrained`` and ``t2 eval --lora`` (:func:`~transformer_squared.models.apply_adapter`) read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import T2Error
from ..fileio import atomic_path, write_json
from ..models import ADAPTER_CONFIG, ADAPTER_WEIGHTS, import_peft, model_name

# Beside a LoRA adapter: its name, base model, fingerprint and training summary.
TRAINING_NAME = "t2_training.json"
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")


class Policy(Protocol):
    """The trainer's view of what is trained."""

    method: str  # "svf" | "lora"
    model: nn.Module  # the module whose forward gives the policy's logits
    fingerprint: str  # identifies the base weights (a resumed run must have the same)

    def parameters(self) -> list[nn.Parameter]:
        """The trainable tensors, in a fixed order."""

    def num_trainable(self) -> int: ...

    def describe(self) -> str:
        """One line for the log: what is trained, on which matrices."""

    def state(self) -> dict[str, torch.Tensor]:
        """Detached float32 CPU copies of the trainable tensors, by name."""

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy what :meth:`state` returned back in."""

    def base(self) -> contextlib.AbstractContextManager:
        """Inside the block the model runs as the base model (no adaptation)."""

    def sampling(self) -> contextlib.AbstractContextManager:
        """Generation and evaluation (weights fixed)."""

    def training(self) -> contextlib.AbstractContextManager:
        """The forward whose gradient trains the weights."""

    def forward_module(self) -> nn.Module:
        """The module whose ``forward`` signature tells which keyword arguments are accepted."""

    def save(self, out: str | Path, state: dict[str, torch.Tensor], name: str, meta: dict[str, Any]) -> Path:
        """Write ``state`` to ``out`` in the method's format, with ``meta`` (the training summary)."""


class SVFPolicy:
    """SVF z vectors on a causal LM, with the handles the trainer uses (see :class:`Policy`)."""

    method = "svf"

    def __init__(
        self,
        model: nn.Module,
        targets: str | Sequence[str] = "mlp",
        parameterization: str = "direct",
        train_path: str = "factored",
    ) -> None:
        from ..svf import SVFModel

        self.svf = SVFModel(model, targets=targets, parameterization=parameterization, path="merged")
        self.model = model
        self.train_path = train_path
        self.fingerprint = self.svf.fingerprint

    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.svf.named_parameters())

    def parameters(self) -> list[nn.Parameter]:
        return self.svf.parameters()

    def num_trainable(self) -> int:
        return self.svf.num_trainable_parameters()

    def describe(self) -> str:
        return (
            f"SVF on {self.svf.target_spec} ({len(self.svf.layers)} matrices, "
            f"{self.svf.parameterization.kind} parameterization, {self.train_path} training forward)"
        )

    def state(self) -> dict[str, torch.Tensor]:
        return self.svf.state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.svf.load_state(state)

    def base(self) -> contextlib.AbstractContextManager:
        """The base model inside the block: same object, SVF layers switched off."""
        return self.svf.disabled()

    def sampling(self) -> contextlib.AbstractContextManager:
        """Generation / evaluation: the merged path with W' cached while z is fixed."""
        return self.svf.use_path("merged")

    def training(self) -> contextlib.AbstractContextManager:
        return self.svf.use_path(self.train_path)

    def forward_module(self) -> nn.Module:
        return self.model

    def save(self, out: str | Path, state: dict[str, torch.Tensor], name: str, meta: dict[str, Any]) -> Path:
        """Write ``state`` as an expert folder whose metadata carries the training summary."""
        from ..experts import Expert

        extra = {"domain": meta["domain"]} if meta.get("domain") else {}
        if meta.get("labels"):
            extra["labels"] = list(meta["labels"])
        template = self.svf.to_expert(name, task=meta.get("task"), training=meta, **extra)
        if set(state) == set(template.z):  # layer order (a checkpoint reads back in sorted order)
            state = {n: state[n] for n in template.z}
        return Expert(state, template.meta).save(out)


class LoRAPolicy:
    """A PEFT LoRA adapter on a causal LM, with the interface the trainer expects.

    Args:
        model: the causal LM (wrapped in place by PEFT; every base weight is frozen).
        rank, alpha: LoRA rank and scaling numerator (the paper: 16 and 32).
        targets: module names to adapt (default: ``q_proj`` and ``v_proj``).
        seed: seeds the random init of the A matrices (B starts at 0, so the model is unchanged).
    """

    method = "lora"

    def __init__(
        self,
        model: nn.Module,
        rank: int = 16,
        alpha: float = 32,
        targets: Sequence[str] = DEFAULT_LORA_TARGETS,
        seed: int = 0,
    ) -> None:
        peft = import_peft()
        if rank < 1:
            raise T2Error(f"--lora-rank must be at least 1, got {rank}")
        targets = list(targets)
        if not targets:
            raise T2Error("--lora-targets is empty; name the modules to adapt, e.g. q_proj,v_proj")
        for p in model.parameters():
            p.requires_grad_(False)
        config = peft.LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"
        )
        torch.manual_seed(seed)
        try:
            self.model = peft.get_peft_model(model, config)
        except ValueError as exc:
            raise T2Error(
                f"LoRA targets {','.join(targets)} do not fit {type(model).__name__} "
                f"({str(exc).splitlines()[0]}); pass --lora-targets with its module names"
            ) from None
        self.model.eval()
        self.base_model_name = model_name(model)
        self.targets = targets
        self.rank, self.alpha = rank, alpha
        from ..svf import weight_fingerprint

        adapted = [(n, m) for n, m in self.model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
        h = hashlib.sha256()
        for name, module in adapted:
            h.update(f"{name}:{weight_fingerprint(module.base_layer.weight)};".encode())
        self.fingerprint = h.hexdigest()[:16]
        self.num_adapted = len(adapted)

    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the LoRA matrices, in a fixed order."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable()]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        return f"LoRA r={self.rank} alpha={self.alpha:g} on {','.join(self.targets)} ({self.num_adapted} matrices)"

    def state(self) -> dict[str, torch.Tensor]:
        """Detached float32 CPU copies of the trainable tensors."""
        return {n: p.detach().to("cpu", torch.float32).clone() for n, p in self.named_trainable()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy saved tensors back in (names must match exactly)."""
        params = dict(self.named_trainable())
        if set(params) != set(state):
            raise T2Error("the saved LoRA weights do not match this adapter (other rank or targets)")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n].to(p.device, p.dtype))

    def base(self) -> contextlib.AbstractContextManager:
        """Run the base model inside the block (adapter layers off; nothing copied)."""
        return self.model.disable_adapter()

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Generation and evaluation need no special mode for LoRA."""
        yield

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        yield

    def forward_module(self) -> nn.Module:
        """The module whose ``forward`` signature tells which keyword arguments are accepted."""
        return self.model.get_base_model()

    def save(self, out: str | Path, state: dict[str, torch.Tensor], name: str, meta: dict[str, Any]) -> Path:
        """Write ``state`` as a PEFT adapter folder (weights + config) plus ``t2_training.json``."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        current = self.state()
        self.load_state(state)
        try:
            weights = get_peft_model_state_dict(self.model)
        finally:
            self.load_state(current)
        with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
            save_file(
                {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp), metadata={"format": "pt"}
            )
        config = self.model.peft_config["default"].to_dict()
        config["base_model_name_or_path"] = self.base_model_name
        config["inference_mode"] = True
        config = json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
        write_json(out / ADAPTER_CONFIG, config)
        write_json(
            out / TRAINING_NAME,
            {
                "name": name,
                "method": "lora",
                "base_model": self.base_model_name,
                "fingerprint": self.fingerprint,
                **meta,
            },
        )
        return out


def make_policy(config, model: nn.Module) -> Policy:
    """The policy ``config.method`` names, on ``model``."""
    if config.method == "svf":
        return SVFPolicy(
            model, targets=config.targets, parameterization=config.parameterization, train_path=config.train_path
        )
    return LoRAPolicy(
        model, rank=config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets, seed=config.seed
    )


__all__ = ["DEFAULT_LORA_TARGETS", "TRAINING_NAME", "LoRAPolicy", "Policy", "SVFPolicy", "make_policy"]
