"""The `t2` command for the foundation: help, info, expert show/mix, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from transformer_squared import Expert, SVFModel, load_model
from transformer_squared.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("info", "expert", "smoke"):
        assert cmd in text


def test_info_on_a_local_folder(tiny_model_dir, capsys):
    assert main(["info", "--model", str(tiny_model_dir), "--list"]) == 0
    text = capsys.readouterr().out
    assert "trainable (z): 192 in 6 matrices" in text  # 2 layers × 3 matrices × rank 32
    assert "model.layers.1.mlp.down_proj" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["info", "--model", "{tiny}", "--targets", "nothing_here"], "matched no module"),
        (["info", "--model", "{tiny}", "--dtype", "float7"], "unknown dtype"),
        (["expert", "show", "/nonexistent/expert"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, tiny_model_dir, capsys):
    argv = [a.replace("{tiny}", str(tiny_model_dir)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_expert_show_and_mix(tiny_model_dir, tmp_path, capsys):
    model, _ = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    experts = []
    for i, name in enumerate(["a", "b"]):
        with torch.no_grad():
            for p in svf.parameters():
                p.fill_(1.0 + i)
        experts.append(svf.to_expert(name, task=name).save(tmp_path / name))
    assert main(["expert", "show", str(experts[0])]) == 0
    assert "'a'" in capsys.readouterr().out
    assert main(["expert", "mix", *map(str, experts), "--weights", "0.25,0.75", "--out", str(tmp_path / "m")]) == 0
    mixed = Expert.load(tmp_path / "m")
    assert torch.allclose(next(iter(mixed.z.values())), torch.full((32,), 0.25 + 1.5))
    assert main(["expert", "mix", *map(str, experts), "--weights", "1", "--out", str(tmp_path / "x")]) == 2


def test_console_script_exit_code(tmp_path):
    """The installed entry point turns a user mistake into exit code 2 and one stderr line."""
    proc = subprocess.run(
        [sys.executable, "-m", "transformer_squared.cli", "info", "--model", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("t2 info: error: unknown model")
