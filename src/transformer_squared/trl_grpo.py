"""SVF inside TRL: :class:`SVFGRPOTrainer` trains an SVF expert with TRL's ``GRPOTrainer``.

TRL brings what this project's own trainer does not: accelerate / DeepSpeed launchers, vLLM
generation, its loss variants and logging. The z vectors of an :class:`~transformer_squared.svf.SVFModel`
are the only trainable parameters (SVFModel freezes every base weight), so TRL's optimiser sees
nothing else. Where TRL would load a second copy of the model as the KL reference (``beta > 0``),
this trainer hands it the same model with SVF switched off (:meth:`SVFModel.disabled`): the exact
base model, no extra memory. See docs/trl.md.

    svf = t2.SVFModel(model, targets="mlp")
    trainer = SVFGRPOTrainer(svf, reward_funcs=my_reward, args=GRPOConfig(...),
                             train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_expert("experts/mine", domain="geo")

Needs ``pip install trl`` (the version pinned in requirements.txt is tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .errors import T2Error

try:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise T2Error("the TRL path needs the trl package: run `pip install trl==1.16.0` (see docs/trl.md)") from exc

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

    from .svf import SVFModel

__all__ = ["GRPOConfig", "SVFGRPOTrainer", "SVFReference", "merged_named_weights"]


class SVFReference(nn.Module):
    """The policy model with SVF switched off, used where TRL wants a frozen reference model.

    It holds no weights of its own (the model is not registered as a submodule, so nothing is
    counted, moved or saved twice); each call runs the shared model inside ``svf.disabled()``
    without gradients.
    """

    _svf: SVFModel  # set with object.__setattr__: nn.Module would register the model as a submodule

    def __init__(self, svf: SVFModel) -> None:
        super().__init__()
        object.__setattr__(self, "_svf", svf)

    @property
    def config(self) -> Any:
        return self._svf.model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), self._svf.disabled():
            return self._svf.model(*args, **kwargs)


def merged_named_weights(svf: SVFModel) -> Iterator[tuple[str, torch.Tensor]]:
    """The wrapped model's parameters as a plain checkpoint would name them, with each SVF target's
    adapted W' (in its module's own layout and dtype) in place of its frozen base weight, and no z.

    What a serving engine that knows nothing of SVF must load to generate like the policy (TRL
    sends these to vLLM when ``use_vllm=True``).
    """
    owners = {f"{name}.weight": layer for name, layer in svf.layers.items()}
    with torch.no_grad():
        for name, param in svf.model.named_parameters():
            if name.endswith(".z") and name[: -len(".z")] in svf.layers:
                continue
            layer = owners.get(name)
            if layer is None or not layer.enabled:
                yield name, param.data
                continue
            w = layer.merged_weight()
            yield name, (w.t() if layer.transposed else w).to(param.dtype).contiguous()


class _FreshMergedWeights(TrainerCallback):
    """Drop SVF's cached W' after every optimiser step.

    SVFLinear reuses W' while ``z._version`` is unchanged, but the fused AdamW that transformers
    picks by default (``adamw_torch_fused``) updates z in place without bumping its version
    counter: without this, generation would keep sampling from the weights of step 0.
    """

    def __init__(self, svf: SVFModel) -> None:
        self.svf = svf

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for layer in self.svf.layers.values():
            layer.clear_cache()


class SVFGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` on the model inside ``svf``, with the base model as KL reference.

    Takes GRPOTrainer's keyword arguments (``reward_funcs``, ``args``, ``train_dataset``,
    ``processing_class``, ...) except ``model`` and ``peft_config``. With ``args.beta > 0`` TRL
    would build its reference model by loading the policy's checkpoint again; here TRL is built
    with ``beta = 0`` (so it loads nothing) and then given :class:`SVFReference` and the real beta,
    which is what its loss and metrics read at each step.
    """

    args: GRPOConfig  # Trainer declares TrainingArguments; GRPOTrainer is always given a GRPOConfig

    def __init__(self, svf: SVFModel, **kwargs: Any) -> None:
        if "model" in kwargs or kwargs.get("peft_config") is not None:
            raise T2Error("SVFGRPOTrainer trains the model inside the SVFModel: pass no model= or peft_config=")
        if svf.num_trainable_parameters() == 0:
            raise T2Error("the SVFModel has no trainable z vectors (no target matrices)")
        args = kwargs.get("args")
        if args is None:
            raise T2Error("pass args=GRPOConfig(...) (output_dir, batch sizes, num_generations, ...)")
        if getattr(args, "sync_ref_model", False):
            raise T2Error("sync_ref_model is not supported with SVF: the reference is always the base model")
        if args.gradient_checkpointing:
            # Only z needs gradients and no input to a checkpointed block requires grad, so
            # re-entrant checkpointing would silently give z no gradient at all.
            args.gradient_checkpointing_kwargs = {**(args.gradient_checkpointing_kwargs or {}), "use_reentrant": False}
        beta = args.beta
        args.beta = 0.0
        try:
            # SVFModel wraps any nn.Module; TRL needs a transformers model, which is what svf wraps here.
            super().__init__(model=cast("PreTrainedModel", svf.model), **kwargs)
        finally:
            args.beta = beta
        self.svf = svf
        self.beta = beta
        self.add_callback(_FreshMergedWeights(svf))
        generation = getattr(self, "vllm_generation", None)
        if generation is not None:  # use_vllm=True: send W' (not the frozen W, and no z) to vLLM
            fix = generation._fix_param_name_to_vllm

            def svf_weights() -> Iterator[tuple[str, torch.Tensor]]:
                for name, tensor in merged_named_weights(svf):
                    yield fix(name), tensor

            generation._iter_named_params = svf_weights
        if beta != 0.0:
            # TRL declares ref_model a PreTrainedModel but only calls it (and reads .config): SVFReference
            # stands in for one without being a PreTrainedModel (that would load or hold a second copy).
            self.ref_model = SVFReference(svf)  # type: ignore[assignment]

    def save_expert(self, path: str | Path, name: str | None = None, **meta: Any) -> Path:
        """Write the current z vectors as an expert folder (``meta``: e.g. ``task=``, ``domain=``)."""
        from .experts import Expert

        name = name or Path(path).name
        state = self.state
        training = {
            "trainer": "trl.GRPOTrainer",
            "steps": int(state.global_step),
            "beta": self.beta,
            "num_generations": self.args.num_generations,
            "learning_rate": self.args.learning_rate,
        }
        meta = {"training": training, **meta}
        return Expert.from_svf(self.svf, name=name, **meta).save(path)
