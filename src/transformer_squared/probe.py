"""A cheap first pass: route from an early layer of the base model with a linear probe.

The paper's first pass reads a whole classification prompt through the whole model before the
second pass starts, which costs about as much as the answer itself when the answer is short. A
:class:`ProbeRouter` runs only the first ``layer`` decoder blocks of the base model on the request
(its first ``max_tokens`` tokens, no instruction around it), averages their output over the
tokens, and reads the label from a multinomial logistic regression on that vector. Trained on
requests of the training tasks only (``t2 train-router``), it is used with
``AdaptiveModel(strategy="probe", router=...)`` or ``t2 eval --adapt probe --router DIR``.

Stopping after ``layer`` blocks is done with a forward hook that ends the forward pass, so it works
for any causal LM whose decoder blocks sit in one ``nn.ModuleList`` (Llama, Qwen2, GPT-2, ...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import T2Error

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

FORMAT_VERSION = 1


class _Stop(Exception):
    """Raised by the hook once the chosen block has run."""


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (the longest ``nn.ModuleList`` of identical blocks)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: nn.ModuleList | None = None
    for module in model.modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and len({type(m) for m in module}) == 1
            and (best is None or len(module) > len(best))
        ):
            best = module
    if best is None or (n is not None and len(best) != n):
        raise T2Error("could not find the model's decoder blocks (one nn.ModuleList of num_hidden_layers blocks)")
    return best


@torch.no_grad()
def early_features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layer: int,
    max_tokens: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean over tokens of the output of decoder block ``layer`` (1-based), one row per text.

    Only blocks 1..``layer`` run; each text is cut to its first ``max_tokens`` tokens.
    """
    blocks = decoder_blocks(model)
    if not 1 <= layer <= len(blocks):
        raise T2Error(f"probe layer must be between 1 and {len(blocks)}, got {layer}")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: list[torch.Tensor] = []
    handle = blocks[layer - 1].register_forward_hook(hook)
    try:
        for s in range(0, len(texts), batch_size):
            ids = [
                tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] or [pad]
                for t in texts[s : s + batch_size]
            ]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
            captured.clear()
            try:
                model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            except _Stop:
                pass
            if not captured:
                raise T2Error("the probe's hook never ran: the model skipped its decoder blocks")
            h = captured[0].float()
            m = mask[..., None].to(h.dtype)
            rows.append(((h * m).sum(1) / m.sum(1)).cpu())
    finally:
        handle.remove()
    return torch.cat(rows)


@dataclass
class ProbeRouter:
    """Labels read by a linear probe on an early layer's mean hidden state."""

    labels: list[str]
    layer: int
    max_tokens: int
    mean: torch.Tensor  # (d,) feature standardisation
    std: torch.Tensor  # (d,)
    weight: torch.Tensor  # (k, d)
    bias: torch.Tensor  # (k,)
    meta: dict

    def probabilities(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 32
    ) -> torch.Tensor:
        """(n, k) label probabilities for ``texts`` (run it with the base weights)."""
        x = early_features(model, tokenizer, texts, self.layer, self.max_tokens, batch_size)
        return torch.softmax(((x - self.mean) / self.std) @ self.weight.T + self.bias, dim=-1)

    def predict(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.probabilities(model, tokenizer, texts).argmax(-1).tolist()]

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from .fileio import write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "mean": self.mean.contiguous(),
                "std": self.std.contiguous(),
                "weight": self.weight.contiguous(),
                "bias": self.bias.contiguous(),
            },
            str(path / "router.safetensors"),
        )
        write_json(
            path / "router.json",
            {
                "format_version": FORMAT_VERSION,
                "kind": "probe",
                "labels": self.labels,
                "layer": self.layer,
                "max_tokens": self.max_tokens,
                **self.meta,
            },
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProbeRouter:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "router.json").is_file():
            raise T2Error(f"{path} is not a router folder (no router.json; make one with t2 train-router)")
        info = json.loads((path / "router.json").read_text())
        if info.get("format_version") != FORMAT_VERSION or info.get("kind") != "probe":
            raise T2Error(f"{path}/router.json: unknown router format {info.get('format_version')!r}")
        t = load_file(str(path / "router.safetensors"))
        meta = {k: v for k, v in info.items() if k not in ("format_version", "kind", "labels", "layer", "max_tokens")}
        return cls(
            labels=list(info["labels"]),
            layer=int(info["layer"]),
            max_tokens=int(info["max_tokens"]),
            mean=t["mean"],
            std=t["std"],
            weight=t["weight"],
            bias=t["bias"],
            meta=meta,
        )


def fit_probe(
    features: torch.Tensor, targets: torch.Tensor, n_labels: int, l2: float = 1e-3, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with an L2 penalty, by full-batch L-BFGS on standardised features.

    Returns (mean, std, weight, bias).
    """
    x = features.float()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    torch.manual_seed(0)
    w = torch.zeros(n_labels, x.shape[1], requires_grad=True)
    b = torch.zeros(n_labels, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ w.T + b, targets) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach(), b.detach()


def train_probe_router(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[tuple[str, str]],
    val: Sequence[tuple[str, str]],
    layers: Sequence[int] = (2, 4, 6, 8, 12),
    max_tokens: int = 64,
    tolerance: float = 0.005,
    l2: float = 1e-3,
    progress: bool = True,
) -> tuple[ProbeRouter, dict[int, float]]:
    """Fit a probe at each candidate layer on ``train`` (text, label) pairs and keep the cheapest good one.

    The rule, fixed beforehand: the earliest layer whose val accuracy is within ``tolerance`` of the
    best val accuracy. Returns the router and the val accuracy per layer.
    """
    from tqdm.auto import tqdm

    if not train or not val:
        raise T2Error("a probe router needs labelled train and val requests")
    labels = sorted({lab for _, lab in train})
    missing = sorted({lab for _, lab in val} - set(labels))
    if missing:
        raise T2Error(f"val labels {missing} have no train requests")
    index = {lab: i for i, lab in enumerate(labels)}
    y_train = torch.tensor([index[lab] for _, lab in train])
    y_val = torch.tensor([index[lab] for _, lab in val])
    fits: dict[int, tuple] = {}
    val_acc: dict[int, float] = {}
    for layer in tqdm(layers, desc="probe layers", disable=not progress):
        xt = early_features(model, tokenizer, [t for t, _ in train], layer, max_tokens)
        xv = early_features(model, tokenizer, [t for t, _ in val], layer, max_tokens)
        mean, std, w, b = fit_probe(xt, y_train, len(labels), l2=l2)
        pred = (((xv - mean) / std) @ w.T + b).argmax(-1)
        val_acc[layer] = float((pred == y_val).float().mean())
        fits[layer] = (mean, std, w, b)
    best = max(val_acc.values())
    layer = min(layer for layer, acc in val_acc.items() if acc >= best - tolerance)
    mean, std, w, b = fits[layer]
    meta = {
        "val_accuracy_by_layer": {str(k): v for k, v in val_acc.items()},
        "train_n": len(train),
        "val_n": len(val),
        "rule": f"earliest layer within {tolerance:.1%} of the best val accuracy",
        "l2": l2,
    }
    return ProbeRouter(labels, layer, max_tokens, mean, std, w, b, meta), val_acc
