"""What `t2 export` tells and names: the files it wrote with their sizes, the real base model in
adapter_config.json (never a cache folder), and the vLLM rank limit."""

from __future__ import annotations

import json

from test_export import expert_on

from transformer_squared.cli import export as cli_export
from transformer_squared.cli import main
from transformer_squared.export import export_lora, export_merged, folder_files, human_size
from transformer_squared.models import DEFAULT_HUB_ID, DEFAULT_MODEL_NAME, load_model
from transformer_squared.svf import SVFModel


def test_cli_prints_what_it_wrote_and_its_size(tmp_path, tiny_model_dir, capsys, monkeypatch):
    model, _ = load_model(str(tiny_model_dir), progress=False)
    expert_on(SVFModel(model)).save(tmp_path / "e")
    monkeypatch.setattr(cli_export, "VLLM_MAX_LORA_RANK", 4)  # the tiny model's full rank is above it
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
    files = folder_files(tmp_path / "l")
    total = sum(size for _, size in files)
    assert f"{tmp_path / 'l'}: {len(files)} files, {human_size(total)}" in out
    assert "adapter_model.safetensors" in out and "adapter_config.json" in out
    assert "the largest LoRA rank vLLM serves; for vLLM export with --rank 4 or less" in out
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
    out = capsys.readouterr().out
    assert f"{tmp_path / 'm'}: " in out and "model.safetensors" in out


def test_adapter_names_the_hub_model_not_a_cache_folder(tmp_path, tiny_model_dir):
    # A tiny model standing in for the bundled default, which is loaded from a converted cache folder.
    model, tok = load_model(str(tiny_model_dir), progress=False)
    model.t2_model_name, model.t2_hub_id = DEFAULT_MODEL_NAME, DEFAULT_HUB_ID
    svf = SVFModel(model)
    e = expert_on(svf)
    assert e.meta["base_model"] == DEFAULT_MODEL_NAME
    report = export_lora(svf, e, tmp_path / "l", rank=2)
    config = json.loads((tmp_path / "l" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_HUB_ID == report["base_model_name_or_path"]
    info = json.loads((tmp_path / "l" / "t2_export.json").read_text())
    assert info["base_model"] == DEFAULT_MODEL_NAME and "Q4_1" in info["base_weights"]
    export_merged(svf, e, tmp_path / "m", tokenizer=tok)
    merged = json.loads((tmp_path / "m" / "t2_export.json").read_text())
    assert merged["base_model_name_or_path"] == DEFAULT_HUB_ID and merged["kind"] == "merged"


def test_human_size():
    assert [human_size(n) for n in (5, 1500, 438_100_000, 2_000_000_000)] == ["5 B", "1.5 kB", "438.1 MB", "2.0 GB"]
