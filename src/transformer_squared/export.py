"""Exporting experts for serving engines that know nothing about SVF.

* :func:`export_merged` writes a plain transformers checkpoint whose target weights are W'.
* :func:`export_lora` writes a PEFT LoRA adapter with ΔW = W' − W = B A. At full rank
  (r = min(m, n)) the adapter is exact; a smaller ``rank`` keeps the top singular directions of
  each ΔW and reports the relative error it costs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .errors import T2Error
from .experts import Expert


def _tmp_dir(out: Path) -> Path:
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _finish(tmp: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def export_merged(svf, expert: Expert, out: str | os.PathLike, tokenizer=None, strict: bool = True) -> Path:
    """Write the model with ``expert`` merged into its weights (``save_pretrained`` format).

    The wrapped model is left as it was (weights restored, SVF still active).
    """
    out = Path(out)
    svf.apply(expert, strict=strict)
    saved = {}
    try:
        with torch.no_grad():
            for name, layer in svf.layers.items():
                saved[name] = layer.weight.detach().clone()
                w = layer.merged_weight()
                layer.weight.copy_(w.t() if layer.transposed else w)
        state = {k: v for k, v in svf.model.state_dict().items() if not k.endswith(".z")}
        tmp = _tmp_dir(out)
        svf.model.save_pretrained(tmp, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "t2_export.json").write_text(json.dumps({"kind": "merged", "expert": expert.name,
                                                        "base_model": expert.meta.get("base_model")}, indent=2))
        _finish(tmp, out)
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                svf.layers[name].weight.copy_(w)
        svf.reset()
    return out


def lora_factors(layer, g: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B: out×k, A: k×in, relative Frobenius error) with B A ≈ W' − W for multiplier ``g``."""
    w = layer.base_weight().to(layer.q.dtype)
    g1 = g - 1
    if layer.side == "in":  # ΔW = (W V diag(g−1)) Vᵀ
        b, a = (w @ layer.q) * g1, layer.q.t()
    else:  # ΔW = U (diag(g−1) Uᵀ W)
        b, a = layer.q, g1[:, None] * (layer.q.t() @ w)
    full = layer.rank
    if rank is None or rank >= full:
        return b.contiguous(), a.contiguous(), 0.0
    delta = b @ a
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    b_k, a_k = u[:, :rank] * s[:rank], vh[:rank]
    total = delta.norm()
    err = float((delta - b_k @ a_k).norm() / total) if total > 0 else 0.0
    return b_k.contiguous(), a_k.contiguous(), err


def export_lora(svf, expert: Expert, out: str | os.PathLike, rank: int | None = None, strict: bool = True) -> dict:
    """Write a PEFT LoRA adapter equivalent to ``expert`` (exact when ``rank`` is None / full).

    Returns a report with the rank used and the worst relative error over matrices.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    out = Path(out)
    if rank is not None and rank < 1:
        raise T2Error("--rank must be at least 1")
    z = expert.check_compatible(svf, strict=strict)
    factors, errors = {}, {}
    with torch.no_grad():
        for name, layer in svf.layers.items():
            g = svf.parameterization.multiplier(z[name].to(layer.sigma.device, torch.float32), layer.sigma)
            b, a, err = lora_factors(layer, g, rank)
            factors[name] = (b, a, layer.transposed)
            errors[name] = err
    k = max(b.shape[1] for b, _, _ in factors.values())
    names = list(factors)
    fan_in_fan_out = any(t for _, _, t in factors.values())
    model = svf.unwrap()
    try:
        config = LoraConfig(r=k, lora_alpha=k, lora_dropout=0.0, bias="none", target_modules=names,
                            fan_in_fan_out=fan_in_fan_out, init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        state = {}
        for name, (b, a, _) in factors.items():
            pad_a = torch.zeros(k, a.shape[1], dtype=torch.float32)
            pad_b = torch.zeros(b.shape[0], k, dtype=torch.float32)
            pad_a[: a.shape[0]] = a
            pad_b[:, : b.shape[1]] = b
            state[f"base_model.model.{name}.lora_A.weight"] = pad_a
            state[f"base_model.model.{name}.lora_B.weight"] = pad_b
        set_peft_model_state_dict(peft_model, state)
        tmp = _tmp_dir(out)
        peft_model.save_pretrained(tmp)
        report = {"kind": "lora", "expert": expert.name, "rank": k, "matrices": len(names),
                  "max_relative_error": max(errors.values()), "base_model": expert.meta.get("base_model")}
        (tmp / "t2_export.json").write_text(json.dumps(report, indent=2))
        _finish(tmp, out)
        peft_model.unload()  # remove the LoRA layers again
    finally:
        # put SVF back on the (now plain) model so the caller's wrapper keeps working
        from .svf import SVFModel

        fresh = SVFModel(model, targets=svf.target_spec, parameterization=svf.parameterization, path=svf.path)
        svf.__dict__.update(fresh.__dict__)
    return report
