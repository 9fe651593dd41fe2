"""The LoRA baseline: a PEFT LoRA adapter trained by the same loop as SVF (RL or SFT).

The paper compares SVF with LoRA of rank 16 (alpha 32) on the attention query and value
projections. :class:`LoRAPolicy` wraps a causal LM with PEFT and gives the trainer the same
handles as the SVF policy: the trainable tensors, a context that runs the base model (PEFT's
``disable_adapter``, for the KL term; nothing is copied) and saving as a PEFT adapter folder
(``adapter_model.safetensors`` + ``adapter_config.json``) that ``PeftModel.from_pretrained`` reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import T2Error
from .fileio import atomic_path, write_json

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TRAINING_NAME = "t2_training.json"
DEFAULT_TARGETS = ("q_proj", "v_proj")


def _import_peft():
    try:
        import peft
    except ImportError:
        raise T2Error("--method lora needs the peft package: pip install 'peft>=0.13' "
                      "(or pip install 'transformer-squared[train]')") from None
    return peft


class LoRAPolicy:
    """A PEFT LoRA adapter on a causal LM, with the interface the trainer expects.

    Args:
        model: the causal LM (wrapped in place by PEFT; every base weight is frozen).
        rank, alpha: LoRA rank and scaling numerator (the paper: 16 and 32).
        targets: module names to adapt (default: ``q_proj`` and ``v_proj``).
        seed: seeds the random init of the A matrices (B starts at 0, so the model is unchanged).
    """

    method = "lora"

    def __init__(self, model: nn.Module, rank: int = 16, alpha: float = 32,
                 targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0) -> None:
        peft = _import_peft()
        if rank < 1:
            raise T2Error(f"--lora-rank must be at least 1, got {rank}")
        targets = list(targets)
        if not targets:
            raise T2Error("--lora-targets is empty; name the modules to adapt, e.g. q_proj,v_proj")
        for p in model.parameters():
            p.requires_grad_(False)
        config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                                 bias="none", task_type="CAUSAL_LM")
        torch.manual_seed(seed)
        try:
            self.model = peft.get_peft_model(model, config)
        except ValueError as exc:
            raise T2Error(f"LoRA targets {','.join(targets)} do not fit {type(model).__name__} "
                          f"({str(exc).splitlines()[0]}); pass --lora-targets with its module names") from None
        self.model.eval()
        self.base_model_name = getattr(model, "t2_model_name", None) or getattr(
            getattr(model, "config", None), "_name_or_path", "")
        self.targets = targets
        self.rank, self.alpha = rank, alpha
        from .svf import weight_fingerprint

        adapted = [(n, m) for n, m in self.model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
        h = hashlib.sha256()
        for name, module in adapted:
            h.update(f"{name}:{weight_fingerprint(module.base_layer.weight)};".encode())
        self.fingerprint = h.hexdigest()[:16]
        self.num_adapted = len(adapted)

    # -- what the trainer uses ------------------------------------------------------------
    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the LoRA matrices, in a fixed order."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable()]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        return (f"LoRA r={self.rank} alpha={self.alpha:g} on {','.join(self.targets)} "
                f"({self.num_adapted} matrices)")

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

    # -- saving ---------------------------------------------------------------------------
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
            save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp),
                      metadata={"format": "pt"})
        config = self.model.peft_config["default"].to_dict()
        config["base_model_name_or_path"] = self.base_model_name
        config["inference_mode"] = True
        config = json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
        write_json(out / ADAPTER_CONFIG, config)
        write_json(out / TRAINING_NAME, {"name": name, "method": "lora", "base_model": self.base_model_name,
                                         "fingerprint": self.fingerprint, **meta})
        return out


def apply_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Merge the PEFT LoRA adapter in ``folder`` into ``model``'s weights and return the plain model.

    Used by ``t2 eval --lora`` to score a LoRA run of ``t2 train --method lora`` (or any PEFT LoRA
    adapter for the same base model) exactly like an SVF expert: merged, so decoding costs the same.
    """
    peft = _import_peft()
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise T2Error(f"{str(folder)!r} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    name = getattr(model, "t2_model_name", None)
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise T2Error(f"could not apply the adapter in {str(folder)!r} to this model: "
                      f"{str(exc).splitlines()[0]}") from None
    merged = wrapped.merge_and_unload()
    merged.eval()
    if name is not None:
        merged.t2_model_name = name
    return merged
