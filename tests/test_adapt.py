"""Two-pass adaptation: routing strategies, fallbacks, CEM few-shot search, `t2 eval --adapt`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from transformer_squared import Expert, SVFModel, T2Error
from transformer_squared.adapt import OTHERS, AdaptiveModel, CEMConfig, cem_search, mean_reference_loglik
from transformer_squared.cli import main


def experts_for(svf: SVFModel, tasks=("gsm8k", "mbpp", "arc_easy"), scale=0.5) -> list[Expert]:
    out = []
    for i, task in enumerate(tasks):
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for p in svf.parameters():
                p.copy_(1 + torch.randn(p.shape, generator=g) * scale)
        out.append(svf.to_expert(f"e-{task}", task=task))
    svf.reset()
    return out


@pytest.fixture
def setup():
    model = tiny_model("llama")
    svf = SVFModel(model)
    tok = tiny_tokenizer()
    return svf, tok, experts_for(svf)


def z_is_identity(svf):
    return all(torch.equal(p.detach(), torch.ones_like(p)) for p in svf.parameters())


def test_prompt_strategy_routes_to_labels_or_others(setup):
    svf, tok, experts = setup
    am = AdaptiveModel(svf, tok, experts, strategy="prompt", min_label_mass=0.0)
    assert am.labels == ["math", "code", "reasoning", OTHERS]
    routes = am.route(["w5 w6", "w7 w8 w9"])
    for r in routes:
        assert r.label in am.labels and set(r.scores) == {*am.labels, "_mass"}
        assert r.label == max((k for k in r.scores if k != "_mass"), key=r.scores.get)
        assert (r.expert is None) == (r.label == OTHERS)
        if r.expert is not None:
            assert r.expert is am.experts[r.label]
    assert z_is_identity(svf)  # the first pass left no expert applied


def test_garbage_first_pass_falls_back_to_base_and_is_counted(setup):
    svf, tok, experts = setup
    am = AdaptiveModel(svf, tok, experts, strategy="prompt", min_label_mass=1.01)
    routes = am.route(["w5", "w6", "w7"])
    assert all(r.fallback and r.expert is None for r in routes)
    assert am.stats["fallbacks"] == 3 and am.stats["requests"] == 3


def test_classifier_strategy_uses_the_classifier_then_resets(setup):
    svf, tok, experts = setup
    classifier = experts_for(svf, tasks=("classify",), scale=2.0)[0]
    classifier.meta["labels"] = ["math", "code", "reasoning"]
    base = AdaptiveModel(svf, tok, experts, strategy="prompt", min_label_mass=0.0)
    clf = AdaptiveModel(svf, tok, experts, strategy="classifier", classifier=classifier, min_label_mass=0.0)
    assert clf.labels == ["math", "code", "reasoning"]
    a = base.route(["w5 w6 w7"])[0].scores
    b = clf.route(["w5 w6 w7"])[0].scores
    assert any(abs(a[k] - b[k]) > 1e-6 for k in ("math", "code", "reasoning"))
    assert z_is_identity(svf)
    # a long first pass merges the classifier instead (same scores), and still leaves z alone
    texts = ["w5 w6 w7", "w9 w10", "w11 w12 w13 w14"]
    factored = [r.scores for r in clf.route(texts)]
    clf.merge_min_tokens = 1
    merged = [r.scores for r in clf.route(texts)]
    for f, m in zip(factored, merged, strict=True):
        assert all(abs(f[k] - m[k]) < 1e-5 for k in f)
    assert z_is_identity(svf)


def test_oracle_and_none(setup):
    svf, tok, experts = setup
    oracle = AdaptiveModel(svf, tok, experts, strategy="oracle")
    r = oracle.route(["x", "y", "z"], domains=["code", "math", "unknown"])
    assert [x.expert.name if x.expert else None for x in r] == ["e-mbpp", "e-gsm8k", None]
    none = AdaptiveModel(svf, tok, [], strategy="none")
    assert all(x.expert is None for x in none.route(["a"]))


def test_generate_answers_each_request_with_its_route(setup):
    svf, tok, experts = setup
    am = AdaptiveModel(svf, tok, experts, strategy="oracle")
    out = am.generate(["w5 w6", "w7"], max_new_tokens=3, domains=["math", None])
    assert [r.expert.name if r.expert else None for r, _ in out] == ["e-gsm8k", None]
    assert all(g.num_tokens >= 1 for _, g in out)


def test_bad_configurations(setup):
    svf, tok, experts = setup
    with pytest.raises(T2Error, match="unknown adaptation strategy"):
        AdaptiveModel(svf, tok, experts, strategy="magic")
    with pytest.raises(T2Error, match="at least one expert"):
        AdaptiveModel(svf, tok, [], strategy="prompt")
    with pytest.raises(T2Error, match="classification expert"):
        AdaptiveModel(svf, tok, experts, strategy="classifier")
    with pytest.raises(T2Error, match="claim the domain"):
        AdaptiveModel(svf, tok, [experts[0], experts[0]], strategy="prompt")
    other = SVFModel(tiny_model("llama", seed=5))
    with pytest.raises(T2Error, match="trained on other weights"):
        AdaptiveModel(other, tok, experts, strategy="prompt")
    attn = SVFModel(tiny_model("llama"), targets="attn")
    with pytest.raises(T2Error, match="no vector for matrix"):
        AdaptiveModel(attn, tok, experts, strategy="prompt")


def test_cem_never_returns_worse_than_the_uniform_mixture(setup):
    from transformer_squared.tasks import get_task

    svf, tok, experts = setup
    task = get_task("arc_easy")
    shots = task.load("val")[:3]
    cfg = CEMConfig(population=6, iterations=3, max_new_tokens=2, batch_size=3, seed=1)
    mixture, history = cem_search(svf, tok, task, experts, shots, cfg, progress=False)
    assert len(history) == 3 and z_is_identity(svf)
    uniform = Expert.mix(experts, [1 / 3] * 3)
    svf.apply(uniform)
    ll_uniform = mean_reference_loglik(svf, tok, task, shots)
    svf.apply(mixture)
    ll_best = mean_reference_loglik(svf, tok, task, shots)
    svf.reset()
    # nothing is answered right by a random tiny model, so the tie-break decides: the winner's
    # log-likelihood is at least the uniform mixture's (which is always a candidate)
    assert ll_best >= ll_uniform - 1e-6
    assert mixture.meta["fewshot"]["shots"] == [s.id for s in shots]
    per_matrix, _ = cem_search(
        svf,
        tok,
        task,
        experts,
        shots,
        CEMConfig(population=4, iterations=1, per_matrix=True, max_new_tokens=1),
        progress=False,
    )
    assert len(per_matrix.meta["mixture"]["weights"]) == 3


def test_loglik_two_pass_scores_each_item_as_its_expert_alone(setup):
    """Routing in loglik mode = scoring each item with its chosen expert (or the base) on its own."""
    from transformer_squared.evaluation import evaluate_loglik
    from transformer_squared.tasks import get_task

    svf, tok, experts = setup
    task = get_task("arc_easy")
    items = task.load("test")[:6]
    plan = [experts[0], None, experts[1], experts[0], experts[2], None]
    by_id = {it.id: e for it, e in zip(items, plan, strict=True)}
    summary, rows = evaluate_loglik(
        svf.model,
        tok,
        task,
        items,
        batch_size=6,
        progress=False,
        svf=svf,
        choose_experts=lambda batch: [by_id[it.id] for it in batch],
    )
    assert z_is_identity(svf)
    assert summary.extra["first_pass_seconds"] >= 0 and summary.extra["second_pass_seconds"] > 0
    alone = {}
    for e in (None, *experts):
        if e is not None:
            svf.apply(e)
        _, r = evaluate_loglik(svf.model, tok, task, items, batch_size=6, progress=False)
        svf.reset()
        alone[None if e is None else e.name] = {x["id"]: x for x in r}
    for row, e in zip(rows, plan, strict=True):
        name = None if e is None else e.name
        assert row["expert"] == name
        assert row["logp"] == pytest.approx(alone[name][row["id"]]["logp"], abs=1e-4)
    # the experts really differ, so the check above can fail
    assert alone[None][items[0].id]["logp"] != pytest.approx(alone[experts[0].name][items[0].id]["logp"], abs=1e-4)


def test_cem_loglik_fitness_is_the_expected_accuracy(setup):
    from transformer_squared.adapt import _expected_accuracy
    from transformer_squared.tasks import get_task

    svf, tok, _ = setup
    from transformer_squared.tasks import Item

    experts = experts_for(svf, scale=3.0)
    task = get_task("arc_easy")
    # options the tiny word-level tokenizer tells apart (ARC's real words are all unknown to it)
    shots = [
        Item(
            id=f"s{i}",
            question="q",
            answer="ABCD"[i],
            reference="",
            data={"stem": f"w{3 + i} w4", "choices": ["w5 w6", "w7", "w8 w9 w10", "w11"]},
        )
        for i in range(4)
    ]
    cfg = CEMConfig(population=4, iterations=2, batch_size=4, seed=0, mode="loglik")
    mixture, history = cem_search(svf, tok, task, experts, shots, cfg, progress=False)
    assert z_is_identity(svf) and len(history) == 2
    fit = mixture.meta["fewshot"]
    assert 0 < fit["expected_accuracy"] < 1 and 0 <= fit["correct"] <= 4
    svf.apply(Expert.mix(experts, [1 / 3] * 3))
    uniform = _expected_accuracy(svf.model, tok, task, shots, cfg)
    svf.apply(mixture)
    best = _expected_accuracy(svf.model, tok, task, shots, cfg)
    svf.reset()
    assert best[0] == pytest.approx(fit["expected_accuracy"], abs=1e-6)
    assert best[0] >= uniform[0] - 1e-6  # the uniform mixture is always a candidate
    # a continuous fitness: two different mixtures score differently
    svf.apply(experts[0])
    assert _expected_accuracy(svf.model, tok, task, shots, cfg)[0] != pytest.approx(uniform[0], abs=1e-5)
    svf.reset()
    with pytest.raises(T2Error, match="multiple-choice"):
        cem_search(svf, tok, get_task("gsm8k"), experts, get_task("gsm8k").load("val")[:2], cfg, progress=False)


def _save(experts, tmp_path):
    return [str(e.save(tmp_path / e.name)) for e in experts]


def test_eval_adapt_cli(tiny_model_dir, tmp_path, capsys):
    from transformer_squared import load_model

    model, _ = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    dirs = _save(experts_for(svf), tmp_path)
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--task",
                "arc_easy",
                "--model",
                str(tiny_model_dir),
                "--adapt",
                "prompt",
                "--experts",
                *dirs,
                "--limit",
                "4",
                "--max-new-tokens",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["adapt"] == "prompt" and sum(report["routed"].values()) == 4
    assert report["extra"]["first_pass_seconds"] > 0 and report["extra"]["second_pass_seconds"] > 0
    out_ll = tmp_path / "ll.json"
    assert (
        main(
            [
                "eval",
                "--task",
                "arc_easy",
                "--model",
                str(tiny_model_dir),
                "--adapt",
                "prompt",
                "--mode",
                "loglik",
                "--experts",
                *dirs,
                "--limit",
                "4",
                "--out",
                str(out_ll),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(out_ll.read_text())
    assert report["extra"]["mode"] == "loglik" and sum(report["routed"].values()) == 4
    rows = [json.loads(x) for x in (tmp_path / "ll.json.items.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("expert" in r and "logp" in r for r in rows)
    out2 = tmp_path / "f.json"
    assert (
        main(
            [
                "eval",
                "--task",
                "arc_challenge",
                "--model",
                str(tiny_model_dir),
                "--adapt",
                "fewshot",
                "--experts",
                *dirs,
                "--limit",
                "5",
                "--shots",
                "2",
                "--cem-population",
                "3",
                "--cem-iterations",
                "1",
                "--max-new-tokens",
                "2",
                "--out",
                str(out2),
                "--mixture-out",
                str(tmp_path / "mix"),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(out2.read_text())
    assert not set(report["shots"]) & {
        json.loads(x)["id"] for x in (tmp_path / "f.json.items.jsonl").read_text().splitlines()
    }
    assert Expert.load(tmp_path / "mix").meta["task"] == "arc_challenge"
    assert (
        main(
            [
                "eval",
                "--task",
                "arc_easy",
                "--model",
                str(tiny_model_dir),
                "--adapt",
                "fewshot",
                "--experts",
                *dirs,
                "--shots",
                "100000",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "fewshot asked for 100000 examples" in capsys.readouterr().err
    assert (
        main(["eval", "--task", "arc_easy", "--model", str(tiny_model_dir), "--adapt", "prompt", "--no-progress"]) == 2
    )


def test_demo_runs_on_a_tiny_model(tiny_model_dir, tmp_path):
    from transformer_squared import load_model
    from transformer_squared.demo import run_demo

    model, _ = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    for e, name in zip(experts_for(svf), ("math", "code", "reasoning"), strict=True):
        e.save(tmp_path / "experts" / name)
    clf = experts_for(svf, tasks=("classify",))[0]
    clf.save(tmp_path / "experts" / "classify")
    lines: list[str] = []
    results = run_demo(
        tmp_path / "experts", per_task=1, model_name=str(tiny_model_dir), max_new_tokens=2, print_fn=lines.append
    )
    assert set(results) == {"base", "prompt", "classifier"}
    # with a router folder the demo also runs the cheap first pass
    from conftest import tiny_tokenizer

    from transformer_squared.probe import train_probe_router

    pairs = [(f"w{5 + i} w{6 + i}", "math" if i % 2 else "code") for i in range(8)]
    router, _ = train_probe_router(model, tiny_tokenizer(), pairs, pairs, layers=(1,), max_tokens=8, progress=False)
    router.save(tmp_path / "experts" / "router")
    results = run_demo(
        tmp_path / "experts", per_task=1, model_name=str(tiny_model_dir), max_new_tokens=2, print_fn=lines.append
    )
    assert set(results) == {"base", "prompt", "classifier", "probe"}
    assert all(r["n"] == 3 for r in results.values())
    assert any("→" in line for line in lines)
    with pytest.raises(T2Error, match="no experts"):
        run_demo(tmp_path / "nothing", model_name=str(tiny_model_dir), print_fn=lines.append)


def test_prompt_labels_keep_the_paper_categories_with_fewer_experts(setup):
    svf, tok, experts = setup
    am = AdaptiveModel(svf, tok, [experts[2]], strategy="prompt", min_label_mass=0.0)
    assert am.labels == ["math", "code", "reasoning", OTHERS]
    for r in am.route(["w5 w6", "w9", "w11 w12 w13"]):
        assert (r.expert is not None) == (r.label == "reasoning") and not r.fallback


def test_continuation_logprobs_do_not_depend_on_padding():
    from transformer_squared.adapt import continuation_logprobs

    model = tiny_model("llama")
    pairs = [([5, 6, 7, 8, 9], [10, 11]), ([12], [13, 14, 15])]
    together, lengths = continuation_logprobs(model, 1, pairs, "cpu")
    alone = [continuation_logprobs(model, 1, [p], "cpu")[0][0] for p in pairs]
    torch.testing.assert_close(together, torch.stack(alone), rtol=1e-5, atol=1e-5)
    assert lengths.tolist() == [2.0, 3.0]
