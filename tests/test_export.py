"""Exports: a merged checkpoint and a PEFT LoRA adapter reproduce the SVF expert's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from transformer_squared import Expert, SVFModel, load_model
from transformer_squared.cli import main
from transformer_squared.export import export_lora, export_merged

IDS = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(4))


def expert_on(svf, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    e = svf.to_expert("x", task="gsm8k")
    svf.reset()
    return e


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("arch,targets", [("llama", "mlp"), ("llama", "all-linear"), ("gpt2", "mlp")])
def test_lora_export_is_exact_at_full_rank(arch, targets, tmp_path):
    from peft import PeftModel

    model = tiny_model(arch)
    svf = SVFModel(model, targets=targets)
    e = expert_on(svf)
    svf.apply(e)
    want = logits(model)
    svf.reset()
    report = export_lora(svf, e, tmp_path / "lora")
    assert report["max_relative_error"] == 0.0
    # the wrapper still works after the export
    svf.apply(e)
    torch.testing.assert_close(logits(model), want)
    fresh = PeftModel.from_pretrained(tiny_model(arch), tmp_path / "lora")
    torch.testing.assert_close(logits(fresh), want, rtol=1e-4, atol=1e-4)
    assert (logits(tiny_model(arch)) - want).abs().max() > 1e-3  # the adapter really changes the model


def test_lora_export_low_rank_reports_its_error(tmp_path):
    svf = SVFModel(tiny_model("llama"))
    e = expert_on(svf)
    report = export_lora(svf, e, tmp_path / "lora4", rank=4)
    assert report["rank"] == 4 and 0 < report["max_relative_error"] < 1
    cfg = json.loads((tmp_path / "lora4" / "adapter_config.json").read_text())
    assert cfg["r"] == 4


def test_merged_export(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model, tok = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    e = expert_on(svf)
    svf.apply(e)
    want = logits(model)
    svf.reset()
    base = logits(model)
    export_merged(svf, e, tmp_path / "merged", tokenizer=tok)
    torch.testing.assert_close(logits(model), base)  # the wrapped model was restored
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(plain), want, rtol=1e-5, atol=1e-5)


def test_export_cli(tmp_path, tiny_model_dir, capsys):
    model, _ = load_model(str(tiny_model_dir), progress=False)
    e = expert_on(SVFModel(model))
    e.save(tmp_path / "e")
    assert main(["export", "--model", str(tiny_model_dir), "--expert", str(tmp_path / "e"), "--format", "lora",
                 "--out", str(tmp_path / "l")]) == 0
    assert (tmp_path / "l" / "adapter_model.safetensors").is_file()
    assert main(["export", "--model", str(tiny_model_dir), "--expert", str(tmp_path / "e"), "--format", "merged",
                 "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    other = Expert.load(tmp_path / "e")
    other.meta["matrix_fingerprints"] = {k: "0" * 16 for k in other.z}
    other.save(tmp_path / "bad")
    assert main(["export", "--model", str(tiny_model_dir), "--expert", str(tmp_path / "bad"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "trained on other weights" in capsys.readouterr().err
