"""The benchmark harness (bench/): what each script measures and how the report is built from JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def test_scaling_measures_each_method_with_its_own_trainable_count():
    import argparse

    import scaling

    args = argparse.Namespace(device="cpu", layers=2, vocab=64, repeats=1)
    rows = {m: scaling.measure(32, 8, 2, m, args) for m in scaling.METHODS}
    # width 32: MLP 32×128, rank 32; SVF trains 3 vectors of 32 per layer
    assert rows["svf-factored"]["trainable"] == rows["svf-merged"]["trainable"] == 2 * 3 * 32
    # LoRA r=16 on q (32→32) and v (32→32): 16·(32+32) each, 2 layers
    assert rows["lora"]["trainable"] == 2 * 2 * 16 * 64
    assert rows["full"]["trainable"] == rows["full"]["model_params"]
    for r in rows.values():
        assert r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["width"] == 32 and r["seq"] == 8


def test_matmul_gflops_is_a_positive_rate():
    import matmul_ceiling
    import torch

    assert matmul_ceiling.gflops(64, 64, 64, torch.float32, "cpu", repeats=1) > 0


def test_quality_table_runs_the_same_protocol_for_svf_and_lora(tmp_path):
    import quality_table as qt

    svf = qt.train_args("gsm8k", "svf-sft", tmp_path / "a", "cpu", 1.0)
    lora = qt.train_args("gsm8k", "lora-sft", tmp_path / "b", "cpu", 1.0)
    strip = {"--out", "--method", "--lr"}

    def options(argv):
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
            elif a in strip:
                skip = True
            else:
                out.append(a)
        return out

    assert options(svf) == options(lora)  # only the output folder, method and learning rate differ
    assert svf[svf.index("--method") + 1] == "svf" and lora[lora.index("--method") + 1] == "lora"
    assert "--eval-every" in svf and svf[svf.index("--eval-every") + 1] == "0"
    rl = qt.train_args("arc_easy", "svf-rl", tmp_path / "c", "cuda", 3.0)
    assert rl[rl.index("--objective") + 1] == "rl" and rl[rl.index("--device") + 1] == "cuda"
    assert int(rl[rl.index("--steps") + 1]) == 3 * int(qt.PROTOCOL["arc_easy"]["rl"].split()[1])
    ev = qt.eval_args("mbpp", "lora-rl", tmp_path / "b", tmp_path / "r.json", "cpu", None)
    assert ev[ev.index("--lora") + 1] == str(tmp_path / "b") and "--expert" not in ev
    assert ev[ev.index("--limit") + 1] == str(qt.PROTOCOL["mbpp"]["limit"])
    base = qt.eval_args("mbpp", "base", None, tmp_path / "r.json", "cpu", 7)
    assert "--lora" not in base and "--expert" not in base and base[base.index("--limit") + 1] == "7"


def _quality_json() -> dict:
    def row(task, cell, correct, n, params, secs):
        return {
            "task": task,
            "cell": cell,
            "n": n,
            "correct": correct,
            "accuracy": correct / n,
            "ci95": [max(0.0, correct / n - 0.1), min(1.0, correct / n + 0.1)],
            "trainable_params": params,
            "train_seconds": secs,
        }

    return {
        "command": "python bench/quality_table.py",
        "machine": "test",
        "seed": 0,
        "lr": {"svf": "2e-3"},
        "protocol": {"arc_easy": {"limit": 10, "sft": "--steps 1", "rl": "--steps 1"}},
        "rows": [
            row("arc_easy", "base", 3, 10, 0, 0.0),
            row("arc_easy", "svf-sft", 4, 10, 100, 12.0),
            row("arc_easy", "lora-sft", 2, 10, 2000, 15.0),
        ],
    }


def test_report_builds_tables_and_headlines_from_json(tmp_path, monkeypatch):
    import report

    results = tmp_path / "results"
    results.mkdir()
    (results / "quality_table.json").write_text(json.dumps(_quality_json()))
    monkeypatch.setattr(report, "RESULTS", results)
    missing: list[str] = []
    lines = report.quality_table(missing)
    text = "\n".join(lines)
    assert not missing and "SVF-SFT" in text and "40.0% (4/10)" in text and "2,000" in text
    heads = report.headlines()
    assert any("100 numbers" in h and "2,000" in h and "5.0%" in h for h in heads)
    assert any("arc_easy held-out (10 items): base 30.0%, SVF-SFT 40.0%, LoRA-SFT 20.0%" in h for h in heads)
    # a results file that is absent is listed as missing, never invented
    (results / "quality_table.json").unlink()
    assert report.quality_table(missing) == [] and missing and "quality_table.json" in missing[0]


def test_report_rewrites_only_the_readme_headline_block(tmp_path):
    import report

    readme = tmp_path / "README.md"
    start, end = "<!-- headline:start (bench/report.py) -->", "<!-- headline:end -->"
    readme.write_text(f"intro\n{start}\nold line\n{end}\noutro\n")
    assert report.update_readme(["- new figure"], readme)
    assert readme.read_text() == f"intro\n{start}\n- new figure\n{end}\noutro\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.update_readme(["- x"], plain) and plain.read_text() == "no markers\n"


@pytest.mark.parametrize("device, mem_key", [("cpu", "peak RSS MiB"), ("cuda", "peak CUDA MiB")])
def test_report_train_step_table_shows_trl_and_the_ceiling_fraction(tmp_path, monkeypatch, device, mem_key):
    import report

    results = tmp_path / "results"
    (results / "gpu").mkdir(parents=True)
    ceiling = {"devices": {"cuda" if device == "cuda" else "cpu": {"ceiling_gflops": {"float32": 100.0}}}}
    (results / ("gpu" if device == "cuda" else "") / "matmul_ceiling.json").write_text(json.dumps(ceiling))
    monkeypatch.setattr(report, "RESULTS", results)
    extra = {"peak_cuda_mib": 7} if device == "cuda" else {}
    d = {
        "command": "python bench/train_step.py",
        "device": device,
        "device_name": "dev",
        "torch_threads": 1,
        "batch_size": 2,
        "samples_per_prompt": 2,
        "max_new_tokens": 8,
        "trl": "measured",
        "update_flops_per_token": 1e9,
        "results": [
            {
                "config": "svf-merged",
                "trainable_params": 10,
                "step_seconds": 2.0,
                "update_seconds_median": 1.0,
                "update_tokens_per_s": 50.0,
                "tokens_per_s": 4.0,
                "peak_rss_mib": 5,
                **extra,
            },
            {
                "config": "trl-grpo-lora",
                "trainable_params": 20,
                "step_seconds": 3.0,
                "tokens_per_s": 2.0,
                "peak_rss_mib": 6,
                **extra,
            },
        ],
    }
    text = "\n".join(report._train_step(d))
    assert mem_key in text and "50.0 (50.0%)" in text  # 50 tokens/s × 1 GFLOP/token = half the 100 GFLOP/s ceiling
    assert "| trl-grpo-lora | 20 | 3.0 | (in step) |" in text


@pytest.mark.parametrize("svf_correct, verdict", [(9, "reproduced"), (4, "not reproduced at this scale")])
def test_report_claims_are_paired_mcnemar_verdicts(tmp_path, monkeypatch, svf_correct, verdict):
    import report

    from transformer_squared.evaluation import wilson_interval

    def row(cell, correct, params):
        return {
            "task": "t",
            "cell": cell,
            "n": 20,
            "correct": correct,
            "accuracy": correct / 20,
            "ci95": list(wilson_interval(correct, 20)),
            "trainable_params": params,
            "train_seconds": 1.0,
        }

    results = tmp_path / "results"
    (results / "quality").mkdir(parents=True)
    data = {"rows": [row("base", 2, 0), row("svf-rl", svf_correct, 10), row("lora-rl", 2, 100)]}
    (results / "quality_table.json").write_text(json.dumps(data))
    for cell, k in (("lora-rl", 2), ("svf-rl", svf_correct)):  # the first k items right; svf's ⊇ lora's
        (results / "quality" / f"t-{cell}.json").write_text(json.dumps({"task": "t", "split": "test"}))
        (results / "quality" / f"t-{cell}.json.items.jsonl").write_text(
            "".join(json.dumps({"id": str(i), "correct": i < k}) + "\n" for i in range(20))
        )
    monkeypatch.setattr(report, "RESULTS", results)
    claim, said, detail = report.claims()[0]
    # 9/20 vs 2/20: the Wilson intervals [25.8, 65.8] and [2.8, 30.1] overlap, but 7 won and 0 lost on the
    # same items gives McNemar p = 2/2^7 = 0.016; 4/20: 2 won, 0 lost, p = 0.5
    assert claim.startswith("SVF-RL beats LoRA") and said == verdict and "SVF 10.0% of LoRA's" in detail
    assert ("won 7, lost 0" if svf_correct == 9 else "won 2, lost 0") in detail


@pytest.mark.parametrize(
    "diffs, verdict",
    [
        ([(0.01, 0.5), (-0.01, 0.4)], "no difference shown in 2 paired comparisons"),
        ([(0.03, 0.001), (0.04, 0.0001)], "reproduced"),
        ([(0.03, 0.001), (0.0, 1.0)], "not reproduced at this scale: SVF above in 1 of 2"),
        ([(0.03, 0.001), (-0.05, 0.001)], "not reproduced: LoRA above in 1 of 2"),
    ],
)
def test_svf_vs_lora_claim_comes_from_the_paired_grid(tmp_path, monkeypatch, diffs, verdict):
    import report

    results = tmp_path / "results"
    results.mkdir()
    seeds = {"0": {"trainable_params": 51840}}
    pairs = {
        f"exact/lora16/s{i}": {"difference": d, "ci95": [d - 0.02, d + 0.02], "p_value": p}
        for i, (d, p) in enumerate(diffs)
    }
    grid = {"task": "arc_easy", "cells": {"svf-exact": {"seeds": seeds}}, "svf_vs_lora": pairs}
    (results / "svf_vs_lora.json").write_text(json.dumps(grid))
    (results / "quality_table.json").write_text(json.dumps({"rows": []}))  # the older table is not used
    monkeypatch.setattr(report, "RESULTS", results)
    (claim,) = [c for c in report.claims() if c[0].startswith("SVF-RL beats LoRA")]
    assert claim[1].startswith(verdict) and "svf 51,840" in claim[2] and "exact vs lora16 s1" in claim[2]
    (line,) = [x for x in report.headlines() if x.startswith("- SVF against LoRA")]
    assert verdict in line and "exact vs lora16 s0" in line


def test_quality_table_reads_what_each_run_learned_from(tmp_path):
    import quality_table as qt

    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "\n".join(
            json.dumps({"step": i, "loss": 1.0, "nll_per_token": v})
            for i, v in enumerate([2.0, 2.0, 2.0, 1.5, 1.0, 1.0, 1.0], start=1)
        )
    )
    assert qt.training_signal(sft) == {"nll_first": 2.0, "nll_last": 1.0}
    rl = tmp_path / "rl.jsonl"
    rows = [
        {"step": 0, "val_accuracy": 0.0},
        {"step": 1, "loss": 0.0, "reward_mean": -1.0, "grad_norm": 0.0},
        {"step": 2, "loss": 0.3, "reward_mean": -0.5, "grad_norm": 0.7},
    ]
    rl.write_text("\n".join(json.dumps(r) for r in rows))
    assert qt.training_signal(rl) == {"reward_mean": -0.75, "steps": 2, "steps_with_gradient": 1}
    assert qt.training_signal(tmp_path / "missing.jsonl") == {}


def test_svf_vs_lora_table_lists_every_cell_and_names_the_unfinished(tmp_path, monkeypatch):
    import report
    import svf_vs_lora as svl

    results = tmp_path / "results"
    cells = results / "svf_vs_lora" / "arc_easy" / "cells"
    cells.mkdir(parents=True)
    row = {
        "val": 0.6,
        "test": 0.62,
        "base": 0.5,
        "difference": 0.12,
        "ci95": [0.1, 0.14],
        "detectable": 0.02,
        "p_value": 1e-9,
        "won": 300,
        "lost": 15,
        "n": 2376,
        "trainable_params": 51840,
        "report": "x.json",
    }
    (cells / "svf-exact.json").write_text(json.dumps({"lr": "1e-3", "lr_search": {}, "seeds": {"0": row, "1": row}}))
    rf = {"lr": "2e-3", "seeds": {"0": row}, "answer_mode": "generate", "rollouts": 10240}
    (cells / "svf-reinforce.json").write_text(json.dumps(rf))
    svl.assemble("arc_easy", results, svl.PROTOCOL)
    md = (results / "svf_vs_lora.md").read_text()
    assert md.count("| svf | exact | 51,840 | 1e-3 |") == 2 and "+12.0 [+10.0, +14.0]" in md
    assert "10,240 rollouts; generated answers" in md
    monkeypatch.setattr(report, "RESULTS", results)
    missing: list[str] = []
    lines = report.svf_vs_lora_table(missing)
    assert any("| svf | exact |" in x for x in lines)
    # five grid cells have no runs yet and are named; the finished ones are not
    assert len(missing) == 1 and "lora16-exact" in missing[0] and "svf-exact" not in missing[0]
    assert "svf-reinforce" not in missing[0]


def test_adaptation_table_resumes_a_report_made_over_fewer_items(tmp_path):
    import adaptation_table as at

    def report(limit):
        path = tmp_path / f"r{limit}.json"
        path.write_text(json.dumps({"n": limit or 164, "limit": limit}))
        return path

    assert not at.complete(tmp_path / "missing.json", 500)
    assert not at.complete(report(50), 500) and not at.complete(report(50), None)  # resumed to the protocol's
    assert at.complete(report(500), 500) and at.complete(report(None), 500) and at.complete(report(None), None)
