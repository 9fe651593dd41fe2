"""Exports: a merged checkpoint and a PEFT LoRA adapter reproduce the SVF expert's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from transformer_squared import Expert, SVFModel, load_model
from transformer_squared.cli import main
from transformer_squared.errors import T2Error
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
    assert (
        main(
            [
                "export",
                "lora",
                "--model",
                str(tiny_model_dir),
                "--expert",
                str(tmp_path / "e"),
                "--out",
                str(tmp_path / "l"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (tmp_path / "l" / "adapter_model.safetensors").is_file()
    assert "relative error total 0.000e+00" in out and "logits of the adapter" in out
    assert (
        main(
            [
                "export",
                "merged",
                "--model",
                str(tiny_model_dir),
                "--expert",
                str(tmp_path / "e"),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert (tmp_path / "m" / "config.json").is_file()
    other = Expert.load(tmp_path / "e")
    other.meta["matrix_fingerprints"] = {k: "0" * 16 for k in other.z}
    other.save(tmp_path / "bad")
    assert (
        main(
            [
                "export",
                "lora",
                "--model",
                str(tiny_model_dir),
                "--expert",
                str(tmp_path / "bad"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "trained on other weights" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # --transfer is the explicit way past the fingerprint check
    assert (
        main(
            [
                "export",
                "lora",
                "--model",
                str(tiny_model_dir),
                "--expert",
                str(tmp_path / "bad"),
                "--out",
                str(tmp_path / "x"),
                "--transfer",
            ]
        )
        == 0
    )


def test_export_refuses_an_existing_folder_unless_overwrite(tmp_path, tiny_model_dir, capsys):
    model, _ = load_model(str(tiny_model_dir), progress=False)
    e = expert_on(SVFModel(model))
    e.save(tmp_path / "e")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    args = [
        "export",
        "merged",
        "--model",
        str(tiny_model_dir),
        "--expert",
        str(tmp_path / "e"),
        "--out",
        str(tmp_path / "m"),
    ]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"
    assert main(args + ["--overwrite"]) == 0
    assert (tmp_path / "m" / "config.json").is_file() and not (tmp_path / "m" / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


@pytest.mark.parametrize("rank", [0, -3, 49])
def test_lora_rank_out_of_range_is_a_one_line_error(rank, tmp_path, tiny_model_dir, capsys):
    model, _ = load_model(str(tiny_model_dir), progress=False)
    e = expert_on(SVFModel(model))  # tiny llama MLP matrices are 32x48 / 48x32: min(m, n) = 32
    e.save(tmp_path / "e")
    assert (
        main(
            [
                "export",
                "lora",
                "--model",
                str(tiny_model_dir),
                "--expert",
                str(tmp_path / "e"),
                "--rank",
                str(rank),
                "--out",
                str(tmp_path / "l"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--rank must be between 1 and 32" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l").exists()


def test_lora_rank_above_min_dim_is_refused(tmp_path):
    svf = SVFModel(tiny_model("llama"))
    e = expert_on(svf)
    with pytest.raises(T2Error, match="between 1 and 32"):
        export_lora(svf, e, tmp_path / "l", rank=33)
    assert not (tmp_path / "l").exists()
    report = export_lora(svf, e, tmp_path / "l", rank=32)  # the largest allowed: exact
    assert report["total_relative_error"] < 1e-6


def test_lora_report_errors_per_matrix_and_logits(tmp_path):
    svf = SVFModel(tiny_model("llama"))
    e = expert_on(svf)
    r8 = export_lora(svf, e, tmp_path / "r8", rank=8, input_ids=IDS)
    r2 = export_lora(svf, e, tmp_path / "r2", rank=2, input_ids=IDS)
    assert set(r8["errors"]) == set(svf.layers)
    assert all(0 < v < 1 for v in r8["errors"].values())
    assert 0 < r8["total_relative_error"] < r2["total_relative_error"] < 1  # fewer directions, more error
    assert 0 < r8["logits_max_abs_diff"] < r2["logits_max_abs_diff"]
    full = export_lora(svf, e, tmp_path / "full", input_ids=IDS)
    assert full["logits_max_abs_diff"] < 1e-4


def test_lora_at_full_rank_equals_the_merged_checkpoint(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    e = expert_on(svf)
    export_merged(svf, e, tmp_path / "merged", tokenizer=tok)
    export_lora(svf, e, tmp_path / "lora")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "lora")
    torch.testing.assert_close(logits(lora), logits(merged), rtol=1e-4, atol=1e-4)


def test_export_merged_mixture_cli(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model, _ = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    a, b = expert_on(svf, seed=1), expert_on(svf, seed=2)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    assert (
        main(
            [
                "export",
                "merged",
                "--model",
                str(tiny_model_dir),
                "--mix",
                f"{tmp_path / 'a'}=0.7",
                f"{tmp_path / 'b'}=0.3",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    svf.apply(Expert.mix([a, b], [0.7, 0.3]))
    want = logits(model)
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m")), want, rtol=1e-5, atol=1e-5)
    assert (
        main(["export", "merged", "--model", str(tiny_model_dir), "--mix", "nonumber", "--out", str(tmp_path / "m2")])
        == 2
    )
