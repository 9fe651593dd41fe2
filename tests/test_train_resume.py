"""Resume after a real kill -9 gives the z of an uninterrupted run; 2 gloo processes == 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import ParityTask

from transformer_squared.training import TrainConfig, train

TESTS = Path(__file__).resolve().parent

# Runs train() with the synthetic task; kills itself with SIGKILL right after step `kill_at`.
SCRIPT = f"""
import json, os, signal, sys
sys.path.insert(0, {str(TESTS)!r})
import torch
from test_train import ParityTask
from transformer_squared.training import TrainConfig, train

cfg = TrainConfig(**json.loads(sys.argv[1]))
kill_at = int(sys.argv[2])

def on_step(row):
    if row["step"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

result = train(cfg, task=ParityTask(), on_step=on_step)
if int(os.environ.get("RANK", "0")) == 0:
    torch.save(result.state, sys.argv[3])
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def run_config(tmp_path: Path, model_dir: Path, name: str, **kw) -> dict:
    base = dict(
        task="parity",
        model=str(model_dir),
        out=str(tmp_path / name),
        steps=4,
        batch_size=4,
        samples_per_prompt=2,
        eval_every=2,
        checkpoint_every=2,
        progress=False,
        lr=1e-2,
        kl_coef=0.1,
    )
    base.update(kw)
    return base


def assert_same_z(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= tol, name
    assert any((v - 1).abs().max() > 1e-4 for v in a.values())  # z really moved


def test_resume_after_kill_9_ends_with_the_same_z(tiny_model_dir, tmp_path):
    straight = train(TrainConfig(**run_config(tmp_path, tiny_model_dir, "straight")), task=ParityTask())

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    cfg = run_config(tmp_path, tiny_model_dir, "killed")
    # killed after step 3: the checkpoint is from step 2, metrics.jsonl already has a row for step 3
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(cfg), "3", str(tmp_path / "unused.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    out = Path(cfg["out"])
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3

    resumed = train(TrainConfig(**{**cfg, "resume": True}), task=ParityTask())
    assert resumed.steps == 4
    assert_same_z(resumed.state, straight.state, 1e-6)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]
    assert resumed.best_step == straight.best_step and resumed.best_val_accuracy == straight.best_val_accuracy


def test_two_gloo_processes_equal_one_process(tiny_model_dir, tmp_path):
    # one process, two micro-batches of 2 prompts == two processes with 2 prompts each
    single = train(TrainConfig(**run_config(tmp_path, tiny_model_dir, "one", grad_accum=2)), task=ParityTask())

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    cfg = run_config(tmp_path, tiny_model_dir, "two")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(script),
            json.dumps(cfg),
            "-1",
            str(tmp_path / "z.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "z.pt")
    assert_same_z(two, single.state, 1e-5)
    config = json.loads((Path(cfg["out"]) / "train_config.json").read_text())
    assert config["world_size"] == 2
