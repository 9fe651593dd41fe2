"""`t2 train --resume` reuses the options of the run it continues; a step-0 expert is warned about.

The trainer itself is replaced by a stub that writes train_config.json as the real one does, so
these tests check the command line in milliseconds (the resume mechanics are in test_train_resume)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import field
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest

from transformer_squared import training
from transformer_squared.cli import main

README_TRAIN = (
    "train --task arc_easy --out {out} --steps 40 --batch-size 8 -k 4 --baseline mean "
    "--kl-coef 0.1 --max-new-tokens 8 --eval-every 10 --val-limit 100"
)


@pytest.fixture
def runs(monkeypatch):
    """Record each TrainConfig given to training.train; write train_config.json like the trainer."""
    seen = []

    def fake_train(config):
        seen.append(config)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / training.CONFIG_NAME).write_text(json.dumps({"task": config.task, "config": config.to_dict()}))
        return SimpleNamespace(
            out=out, best_val_accuracy=0.5, best_step=10, steps=config.steps, seconds=1.0, trainable_params=1
        )

    monkeypatch.setattr(training, "train", fake_train)
    return seen


def test_readme_resume_line_reuses_the_saved_options(runs, tmp_path, capsys):
    out = tmp_path / "reasoning"
    assert main(README_TRAIN.format(out=out).split()) == 0
    assert main(f"train --task arc_easy --out {out} --resume".split()) == 0
    first, resumed = runs
    assert resumed.resume == "auto" and not first.resume
    for name in training.TRAJECTORY_FIELDS + ("steps", "eval_every", "val_limit", "model", "targets"):
        assert getattr(resumed, name) == getattr(first, name), name
    assert (resumed.steps, resumed.batch_size, resumed.samples_per_prompt, resumed.baseline) == (40, 8, 4, "mean")
    assert "resuming with the options saved in" in capsys.readouterr().err


def test_options_given_again_win_and_others_are_not_touched(runs, tmp_path):
    out = tmp_path / "run"
    assert main(README_TRAIN.format(out=out).split() + ["--no-eval-at-start"]) == 0
    assert main(f"train --task arc_easy --out {out} --resume --steps 60 --no-progress".split()) == 0
    first, resumed = runs
    assert resumed.steps == 60 and resumed.batch_size == 8 and resumed.eval_at_start is False
    assert resumed.progress is False and first.progress is True  # how it reports is never taken over


def test_a_new_run_uses_the_defaults(runs, tmp_path):
    assert main(f"train --task arc_easy --out {tmp_path / 'a'}".split()) == 0
    assert runs[0].steps == training.TrainConfig().steps and runs[0].batch_size == training.TrainConfig().batch_size


def test_warning_when_the_saved_expert_is_the_step_0_weights(caplog, tmp_path):
    result = SimpleNamespace(best_step=0, best_val_accuracy=0.27, out=tmp_path)
    with caplog.at_level(logging.WARNING, logger=training.__name__):
        assert training.warn_if_untrained(result) is result
    assert "untrained step-0" in caplog.text and "27.0%" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=training.__name__):
        training.warn_if_untrained(SimpleNamespace(best_step=5, best_val_accuracy=0.3, out=tmp_path))
    assert caplog.text == ""


def test_every_train_config_field_is_a_train_option():
    """The options are built from TrainConfig's fields: a new field cannot be forgotten by the CLI."""
    from transformer_squared.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["train"]._actions}
    assert {f.name for f in dataclasses.fields(training.TrainConfig)} <= dests


@dataclasses.dataclass
class _Opts:
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "which mode"})
    limit: int | None = None
    rate: float = 0.5
    names: list[str] = field(default_factory=lambda: ["x"])
    fast: bool = True
    loud: bool = False
    k: int = field(default=2, metadata={"flags": ("-k",)})


def test_options_from_dataclass_fields():
    from transformer_squared.cli.config_args import add_dataclass_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, _Opts, [f.name for f in dataclasses.fields(_Opts)])
    assert config_from_args(p.parse_args([]), _Opts) == _Opts()
    got = config_from_args(
        p.parse_args("--mode b --limit 3 --rate 2 --names p,q, --no-fast --loud -k 5".split()), _Opts
    )
    assert got == _Opts(mode="b", limit=3, rate=2.0, names=["p", "q"], fast=False, loud=True, k=5)
    assert "{a,b}" in p.format_help() and "which mode" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])


@pytest.mark.parametrize("mode", ["none", "bf16"])
def test_validation_runs_in_the_precision_the_run_trains_in(mode, monkeypatch, tmp_path):
    import contextlib

    import torch

    from transformer_squared import evaluation
    from transformer_squared.training.validation import evaluate_val

    seen = []

    def fake_loglik(*a, **kw):
        seen.append(torch.is_autocast_enabled("cpu"))
        return SimpleNamespace(accuracy=0.5, n=2), []

    monkeypatch.setattr(evaluation, "evaluate_loglik", fake_loglik)
    config = training.TrainConfig(task="arc_easy", out=str(tmp_path), objective="exact", autocast=mode)
    policy = SimpleNamespace(model=None, sampling=contextlib.nullcontext)
    acc, n, _, _ = evaluate_val(config, policy, None, None, [], max_new_tokens=4)
    assert (acc, n) == (0.5, 2) and seen == [mode == "bf16"]
