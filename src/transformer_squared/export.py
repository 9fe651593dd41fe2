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
from typing import TYPE_CHECKING, cast

import torch

from .errors import T2Error
from .experts import Expert
from .fileio import refuse_existing

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .svf import SVFModel


def _check_out(out: Path, overwrite: bool) -> None:
    refuse_existing(out, overwrite)
    if out.exists() and not out.is_dir():
        raise T2Error(f"{str(out)!r} is a file, not a folder")


def _tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _finish(tmp: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


# The largest LoRA rank vLLM serves (its --max-lora-rank takes one of 8, 16, 32, 64, 128, 256, 320, 512).
VLLM_MAX_LORA_RANK = 512


def folder_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(relative name, bytes) of every file under ``folder``, largest first."""
    folder = Path(folder)
    files = [(str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file()]
    return sorted(files, key=lambda f: (-f[1], f[0]))


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def base_model_id(svf: SVFModel, expert: Expert) -> str | None:
    """The base model an exported folder should name: the Hub id the weights come from when known
    (the bundled default's is HuggingFaceTB/SmolLM2-135M-Instruct), else the expert's base model."""
    from .models import hub_base_id

    base = expert.meta.get("base_model")
    return getattr(svf.model, "t2_hub_id", None) or hub_base_id(base) or base or None


def _export_info(svf: SVFModel, expert: Expert, kind: str) -> dict:
    from .models import DEFAULT_MODEL_NAME, model_name

    info = {
        "kind": kind,
        "expert": expert.name,
        "base_model": expert.meta.get("base_model"),
        "base_model_name_or_path": base_model_id(svf, expert),
        "mixture": expert.meta.get("mixture"),
    }
    bundled = DEFAULT_MODEL_NAME in (expert.meta.get("base_model"), model_name(svf.model, None))
    if bundled and kind == "merged":
        info["base_weights"] = (
            "the bundled Q4_1 GGUF of SmolLM2-135M-Instruct, dequantised, with the expert merged "
            "in: exact for the expert, and not the Hub model's weights"
        )
    elif bundled:
        info["base_weights"] = (
            "the expert was made on the bundled Q4_1 GGUF of SmolLM2-135M-Instruct, dequantised; "
            "applied to the Hub weights it is an approximation (their weights differ by the "
            "quantisation error)"
        )
    return info


def export_merged(
    svf: SVFModel,
    expert: Expert,
    out: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
    strict: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the model with ``expert`` merged into its weights (``save_pretrained`` format).

    The folder loads with plain ``AutoModelForCausalLM.from_pretrained``. It is written under a
    temp name and renamed, so a failure leaves nothing behind. The wrapped model is not changed
    (its weights and z vectors are as they were).
    """
    out = Path(out)
    _check_out(out, overwrite)
    state = svf.merged_state_dict(expert, strict=strict)
    tmp = _tmp_dir(out)
    try:
        # SVFModel wraps any nn.Module; exporting needs (and t2 export loads) a transformers model.
        cast("PreTrainedModel", svf.model).save_pretrained(tmp, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "t2_export.json").write_text(json.dumps(_export_info(svf, expert, "merged"), indent=2))
        _finish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def lora_factors(layer, g: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(B: out×k, A: k×in, ‖ΔW − B A‖, ‖ΔW‖) with B A ≈ ΔW = W' − W for multiplier ``g``.

    At full rank B A is ΔW exactly (error 0); below it, the truncated SVD of ΔW (the best
    rank-k approximation in Frobenius norm).
    """
    w = layer.base_weight().to(layer.q.dtype)
    g1 = g - 1
    if layer.side == "in":  # ΔW = (W V diag(g−1)) Vᵀ
        b, a = (w @ layer.q) * g1, layer.q.t()
    else:  # ΔW = U (diag(g−1) Uᵀ W)
        b, a = layer.q, g1[:, None] * (layer.q.t() @ w)
    full = layer.rank
    if rank is None or rank >= full:
        return b.contiguous(), a.contiguous(), 0.0, float((b @ a).norm())
    delta = b @ a
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    b_k, a_k = u[:, :rank] * s[:rank], vh[:rank]
    return b_k.contiguous(), a_k.contiguous(), float(s[rank:].norm()), float(s.norm())


def export_lora(
    svf: SVFModel,
    expert: Expert,
    out: str | os.PathLike,
    rank: int | None = None,
    strict: bool = True,
    overwrite: bool = False,
    input_ids: torch.Tensor | None = None,
) -> dict:
    """Write a PEFT LoRA adapter equivalent to ``expert`` (exact when ``rank`` is None / full).

    Returns a report: the rank, the relative error ‖ΔW − ΔW_R‖/‖ΔW‖ per matrix
    (``errors``), its worst value and the total over all matrices; with ``input_ids`` also the
    largest and mean absolute difference between the adapter's logits and the SVF model's.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    out = Path(out)
    _check_out(out, overwrite)
    z = expert.check_compatible(svf, strict=strict)
    smallest = min(layer.rank for layer in svf.layers.values())
    if rank is not None and not 1 <= rank <= smallest:
        raise T2Error(
            f"--rank must be between 1 and {smallest} (the smallest min(m, n) of the target "
            f"matrices); got {rank}. Leave it out for the exact full-rank adapter"
        )
    want_logits = None
    if input_ids is not None:
        with svf.applied(expert, strict=strict), torch.no_grad():
            want_logits = svf(input_ids.to(svf.parameters()[0].device)).logits.float().cpu()
    factors, errors, sq_err, sq_norm = {}, {}, 0.0, 0.0
    with torch.no_grad():
        for name, layer in svf.layers.items():
            g = svf.parameterization.multiplier(z[name].to(layer.sigma.device, torch.float32), layer.sigma)
            b, a, err, norm = lora_factors(layer, g, rank)
            factors[name] = (b, a, layer.transposed)
            errors[name] = err / norm if norm > 0 else 0.0
            sq_err, sq_norm = sq_err + err**2, sq_norm + norm**2
    k = max(b.shape[1] for b, _, _ in factors.values())
    names = list(factors)
    fan_in_fan_out = any(t for _, _, t in factors.values())
    model = svf.unwrap()
    try:
        config = LoraConfig(
            r=k,
            lora_alpha=k,
            lora_dropout=0.0,
            bias="none",
            target_modules=names,
            fan_in_fan_out=fan_in_fan_out,
            init_lora_weights=False,
        )
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
        report = {
            **_export_info(svf, expert, "lora"),
            "rank": k,
            "matrices": len(names),
            "max_relative_error": max(errors.values()),
            "total_relative_error": (sq_err / sq_norm) ** 0.5 if sq_norm > 0 else 0.0,
            "errors": errors,
        }
        if input_ids is not None and want_logits is not None:
            with torch.no_grad():
                device = next(peft_model.parameters()).device
                got = peft_model(input_ids.to(device)).logits.float().cpu()
            gap = (got - want_logits).abs()
            report["logits_max_abs_diff"] = float(gap.max())
            report["logits_mean_abs_diff"] = float(gap.mean())
        tmp = _tmp_dir(out)
        try:
            peft_model.save_pretrained(str(tmp))
            _name_base(tmp / "adapter_config.json", report["base_model_name_or_path"])
            (tmp / "t2_export.json").write_text(json.dumps(report, indent=2))
            _finish(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        peft_model.unload()  # remove the LoRA layers again
    finally:
        # put SVF back on the (now plain) model so the caller's wrapper keeps working
        from .svf import SVFModel

        fresh = SVFModel(model, targets=svf.target_spec, parameterization=svf.parameterization, path=svf.path)
        svf.__dict__.update(fresh.__dict__)
    return report


def _name_base(config_path: Path, base: str | None) -> None:
    """Point the adapter at the real base model (PEFT writes the path the model was loaded from, which
    for the bundled default is a cache folder on this machine)."""
    if not base or not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
