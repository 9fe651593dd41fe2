"""Which modules SVF adapts: the ``mlp`` / ``attn`` / ``all-linear`` presets or regexes over module names."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from ..errors import T2Error
from .layer import Conv1D, SVFLinear

# Names of MLP and attention projections across common architectures (Llama/Qwen/Mistral,
# GPT-2, GPT-NeoX, Phi, Falcon, OPT ...). Presets only ever select linear layers.
_MLP_CONTAINERS = re.compile(r"(^|\.)(mlp|feed_forward|ffn|block_sparse_moe)(\.|$)")
_ATTN_CONTAINERS = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)")
_OPT_MLP_LEAVES = re.compile(r"(^|\.)layers\.\d+\.(fc1|fc2)$")


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
