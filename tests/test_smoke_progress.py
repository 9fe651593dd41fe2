"""`t2 smoke` and the demo say what they do, how long it should take, and how long each part took."""

from __future__ import annotations

from transformer_squared.cli import main
from transformer_squared.demo import estimate


def test_smoke_prints_numbered_steps_with_times(tiny_model_dir, capsys):
    assert main(["smoke", "--model", str(tiny_model_dir), "--max-new-tokens", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("t2 smoke: 4 steps, time depends on the model's size")
    for i in range(1, 5):
        assert f"[{i}/4] " in out
    assert out.count("done in ") == 4 and "after reset: max |Δlogit| vs base = 0.00e+00" in out
    assert "\ntotal " in out


def test_demo_estimate_names_its_work_and_time():
    line = estimate(2, 3)
    assert "6 held-out questions" in line and "about 4 min on 2 idle CPU cores" in line
