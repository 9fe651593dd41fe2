"""`t2 eval` and the evaluation loop: report, per-item JSONL, resume, intervals, bad input."""

from __future__ import annotations

import json

import pytest

from transformer_squared.cli import main
from transformer_squared.evaluation import wilson_interval


def test_wilson_interval():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo0, hi0 = wilson_interval(0, 10)
    assert lo0 == 0.0 and 0.25 < hi0 < 0.35
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_eval_writes_report_and_resumes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [
        "eval",
        "--task",
        "arc_easy",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "3",
        "--no-progress",
    ]
    assert main(argv + ["--limit", "4"]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 4 and report["task"] == "arc_easy" and report["split"] == "test"
    assert 0.0 <= report["ci95"][0] <= report["accuracy"] <= report["ci95"][1] <= 1.0
    items = out.with_name("r.json.items.jsonl")
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert len(rows) == 4 and {"prompt", "completion", "extracted", "reward", "correct"} <= set(rows[0])
    # simulate an interrupted run: a half-written last line is redone, finished ones are kept
    items.write_text(items.read_text() + '{"id": "cut-off')
    assert main(argv + ["--limit", "6"]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 6
    assert report["generated_tokens"] <= 2 * 4  # only the 2 new items were generated
    assert "test" in capsys.readouterr().out


def test_eval_with_expert(tiny_model_dir, tmp_path):
    import torch

    from transformer_squared import SVFModel, load_model

    model, _ = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    with torch.no_grad():
        for p in svf.parameters():
            p.mul_(1.5)
    svf.to_expert("x", task="arc_easy").save(tmp_path / "x")
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "eval",
                "--task",
                "arc_easy",
                "--model",
                str(tiny_model_dir),
                "--expert",
                str(tmp_path / "x"),
                "--limit",
                "2",
                "--max-new-tokens",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["expert"] == "x"
    # resuming the same --out with the same expert read from another folder is allowed (a moved
    # checkout); with other weights it is refused
    import shutil

    shutil.copytree(tmp_path / "x", tmp_path / "moved")
    argv = ["eval", "--task", "arc_easy", "--model", str(tiny_model_dir), "--limit", "3", "--max-new-tokens", "3"]
    assert main([*argv, "--expert", str(tmp_path / "moved"), "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["n"] == 3
    with torch.no_grad():
        for p in svf.parameters():
            p.mul_(1.5)
    svf.to_expert("x", task="arc_easy").save(tmp_path / "other")
    assert main([*argv, "--expert", str(tmp_path / "other"), "--out", str(out), "--no-progress"]) == 2


def _random_lora(model_dir, out, seed=0):
    """A PEFT LoRA adapter with non-zero B on the tiny model (so it changes the logits)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from transformer_squared import load_model

    model, _ = load_model(str(model_dir), progress=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(out)
    return peft_model


def test_apply_adapter_merges_the_lora_weights(tiny_model_dir, tmp_path):
    import torch

    from transformer_squared import load_model
    from transformer_squared.lora import apply_adapter

    peft_model = _random_lora(tiny_model_dir, tmp_path / "lora")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    base, _ = load_model(str(tiny_model_dir), progress=False)
    with torch.no_grad():
        plain = base(ids).logits
        want = peft_model(ids).logits
        merged = apply_adapter(base, tmp_path / "lora")
        got = merged(ids).logits
    assert not torch.allclose(plain, want, atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert type(merged).__name__ == "LlamaForCausalLM"  # plain model again, no PEFT wrapper


def test_eval_with_lora_adapter(tiny_model_dir, tmp_path):
    _random_lora(tiny_model_dir, tmp_path / "lora")
    out = tmp_path / "l.json"
    argv = [
        "eval",
        "--task",
        "arc_easy",
        "--model",
        str(tiny_model_dir),
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv + ["--lora", str(tmp_path / "lora")]) == 0
    report = json.loads(out.read_text())
    assert report["lora"] == str(tmp_path / "lora") and "--lora" in report["command"] and report["n"] == 2
    # resuming the same --out without the adapter would mix two models' items: refused
    assert main(argv) == 2
    # the same adapter read from another folder resumes; another adapter is refused
    import shutil

    shutil.copytree(tmp_path / "lora", tmp_path / "moved")
    assert main(argv + ["--lora", str(tmp_path / "moved")]) == 0
    _random_lora(tiny_model_dir, tmp_path / "other", seed=1)
    assert main(argv + ["--lora", str(tmp_path / "other")]) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "arc_easy", "--limit", "0"], "--limit must be at least 1"),
        (["--task", "nope"], "unknown task"),
        (["--task", "arc_easy", "--split", "dev"], "split"),
        (["--task", "arc_easy", "--expert", "/no/such/expert"], "does not exist"),
        (["--task", "arc_easy", "--lora", "/no/such/adapter"], "not a PEFT adapter folder"),
        (["--task", "arc_easy", "--lora", "x", "--expert", "y"], "cannot be combined"),
        (["--task", "gsm8k", "--mode", "loglik", "--limit", "2"], "multiple-choice"),
    ],
)
def test_eval_bad_input(extra, message, tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_eval_default_model_arc_easy(tmp_path):
    out = tmp_path / "arc.json"
    assert main(["eval", "--task", "arc_easy", "--limit", "8", "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 8 and report["answered"] >= 6  # SmolLM2 answers ARC with a letter


def test_eval_loglik_writes_every_normalisation_and_compares(tiny_model_dir, tmp_path, capsys):
    from conftest import tiny_model, tiny_tokenizer

    from transformer_squared.evaluation import evaluate_loglik
    from transformer_squared.tasks import get_task

    out = tmp_path / "ll.json"
    argv = [
        "eval",
        "--task",
        "arc_easy",
        "--mode",
        "loglik",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--limit",
        "5",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 5 and report["extra"]["mode"] == "loglik" and report["extra"]["channel"] == "cloze"
    assert set(report["extra"]["accuracy_by_norm"]) == {"token", "char", "sum"}
    assert "--mode loglik" in report["command"]
    rows = [json.loads(line) for line in out.with_name("ll.json.items.jsonl").read_text().splitlines()]
    assert all(r["correct"] == r["correct_by_norm"]["token"] and len(r["logp"]) == len(r["n_tokens"]) for r in rows)
    assert all(r["correct"] == (r["pred"]["token"] == r["gold"]) for r in rows)
    # the same scores from the Python API, without a shared prefix (a different layout, same numbers)
    task = get_task("arc_easy")
    summary, again = evaluate_loglik(
        tiny_model("llama"), tiny_tokenizer(), task, task.load("test")[:5], progress=False, share_prefix=False
    )
    assert summary.extra["mode"] == "loglik"
    for r, r2 in zip(rows, again, strict=True):
        assert r["id"] == r2["id"] and r["logp"] == pytest.approx(r2["logp"], abs=1e-4)
    # a resumed run with another channel, or in generation mode, into the same --out is refused
    assert main([*argv, "--channel", "letter"]) == 2
    assert "another run" in capsys.readouterr().err
    assert main([a for a in argv if a not in ("--mode", "loglik")]) == 2
    assert "another run" in capsys.readouterr().err
    letter = tmp_path / "letter.json"
    assert main([*argv[:-5], "--channel", "letter", "--out", str(letter), "--limit", "5", "--no-progress"]) == 0
    assert all(
        json.loads(x)["n_tokens"] == [1] * len(json.loads(x)["logp"])
        for x in letter.with_name("letter.json.items.jsonl").read_text().splitlines()
    )
    assert main(["compare", str(out), str(letter)]) == 2  # another channel: not like with like
    assert "answer modes" in capsys.readouterr().err
    again = tmp_path / "again.json"
    assert main([*argv[:-5], "--out", str(again), "--limit", "5", "--no-progress"]) == 0
    assert main(["compare", str(out), str(again)]) == 0
    assert "B won 0, lost 0" in capsys.readouterr().out  # the same model scores the same items the same way


def test_eval_autocast_scores_in_bf16_and_keeps_runs_apart(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import torch

    from transformer_squared import evaluation

    seen = []
    real = evaluation.evaluate_loglik

    def spy(*a, **kw):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*a, **kw)

    monkeypatch.setattr(evaluation, "evaluate_loglik", spy)
    base = ["eval", "--task", "arc_easy", "--mode", "loglik", "--model", str(tiny_model_dir), "--limit", "4"]
    fp32, bf16 = tmp_path / "fp32.json", tmp_path / "bf16.json"
    assert main([*base, "--out", str(fp32), "--no-progress"]) == 0
    assert main([*base, "--out", str(bf16), "--autocast", "bf16", "--no-progress"]) == 0
    assert seen == [False, True]
    report = json.loads(bf16.read_text())
    assert report["autocast"] == "bf16" and "--autocast bf16" in report["command"]
    rows = {
        p: [json.loads(x) for x in p.with_name(p.name + ".items.jsonl").read_text().splitlines()] for p in (fp32, bf16)
    }
    diffs = [
        abs(a - b)
        for r, s in zip(rows[fp32], rows[bf16], strict=True)
        for a, b in zip(r["logp"], s["logp"], strict=True)
    ]
    assert 0 < max(diffs) < 0.5  # bf16 rounding: different numbers, close to the fp32 ones
    # a resumed run in the other precision would mix two scorings in one file: refused
    assert main([*base, "--out", str(bf16), "--no-progress"]) == 2
    assert "another run" in capsys.readouterr().err
    # run meta written with "autocast": null (no autocast, an earlier spelling) still resumes in float32
    meta = fp32.with_name("fp32.json.run.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "autocast": None}))
    assert main([*base, "--out", str(fp32), "--no-progress"]) == 0
    # t2 compare says when the two reports were scored in different precisions
    assert main(["compare", str(fp32), str(bf16)]) == 0
    assert "A was scored with --autocast none, B with --autocast bf16" in capsys.readouterr().out
    # the same guard for a two-pass run
    adaptive = [*base, "--adapt", "none", "--out", str(tmp_path / "adaptive.json"), "--no-progress"]
    assert main(adaptive) == 0
    assert main([*adaptive, "--autocast", "bf16"]) == 2
    assert "another run" in capsys.readouterr().err
