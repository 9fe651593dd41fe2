"""The RL trainer: loss math on hand-made numbers, one step on a tiny model, failures, outputs, CLI."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model, tiny_tokenizer

from transformer_squared import Expert, T2Error
from transformer_squared.tasks.base import Item, Task
from transformer_squared.training import (
    TrainConfig,
    Trainer,
    compute_advantages,
    kl_full,
    kl_k3,
    make_batch,
    policy_loss,
    safe_rewards,
    token_logprobs,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class ParityTask(Task):
    """A synthetic task for the tiny word-level tokenizer: a completion is right if its first word is even.

    About half the samples of a random tiny model are right, so rewards are mixed. ``nan`` makes every
    reward NaN; ``raise_on`` names item ids whose check raises.
    """

    name = "parity"
    domain = "others"
    max_new_tokens = 4

    def __init__(
        self,
        n_train: int = 16,
        n_val: int = 6,
        nan: bool = False,
        raise_on: frozenset = frozenset(),
        name: str = "parity",
        splits: tuple = ("train", "val"),
    ) -> None:
        super().__init__("offline")
        self.name = name
        rng = random.Random(0)

        def make(prefix: str, n: int) -> list[Item]:
            return [
                Item(
                    id=f"{prefix}{i}",
                    question=" ".join(f"w{rng.randrange(5, 128)}" for _ in range(3)),
                    answer="even",
                    reference="w10 w12",
                )
                for i in range(n)
            ]

        self.data = {s: make(s, n_train if s == "train" else n_val) for s in splits}
        self.nan, self.raise_on = nan, raise_on

    def splits(self):
        return list(self.data)

    def load(self, split):
        self._check_split(split)
        return list(self.data[split])

    def split_info(self, split):
        return {"task": self.name, "split": split, "provenance": "synthetic"}

    def extract(self, completion):
        words = completion.split()
        return words[0] if words else None

    def is_correct(self, item, completion):
        if item.id in self.raise_on:
            raise RuntimeError(f"checker exploded on {item.id}")
        first = self.extract(completion)
        return bool(first) and first[1:].isdigit() and int(first[1:]) % 2 == 0

    def rewards(self, items, completions):
        if self.nan:
            return [math.nan] * len(items)
        return super().rewards(items, completions)


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        task="parity",
        out=str(tmp_path / "run"),
        steps=2,
        batch_size=4,
        samples_per_prompt=4,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        lr=1e-2,
    )
    base.update(kw)
    return TrainConfig(**base)


def tiny_trainer(tmp_path, task=None, **kw) -> Trainer:
    return Trainer(
        config(tmp_path, **kw), model=tiny_model("llama"), tokenizer=tiny_tokenizer(), task=task or ParityTask()
    )


@pytest.mark.parametrize(
    ("max_new_tokens", "k", "objective", "grad_accum", "micro"),
    [
        (8, 4, "rl", 0, 8),  # short answers: 32 completions in one micro-batch
        (64, 4, "rl", 0, 8),  # 32 x 64 = 2,048 tokens: still one
        (256, 4, "rl", 0, 2),  # 8 completions of 256 tokens
        (256, 16, "rl", 0, 1),  # K above the cap: one prompt at a time
        (8, 4, "sft", 0, 8),  # SFT: every row carries its prompt, so 8 references
        (8, 4, "rl-per-row", 0, 2),  # --no-share-prompt: 8 completions, each with its prompt
        (8, 4, "rl", 4, 4),  # --grad-accum decides
    ],
)
def test_automatic_micro_batches_follow_the_completion_token_budget(
    tmp_path, max_new_tokens, k, objective, grad_accum, micro
):
    trainer = tiny_trainer(
        tmp_path,
        batch_size=16,
        samples_per_prompt=k,
        max_new_tokens=max_new_tokens,
        objective=objective.removesuffix("-per-row"),
        share_prompt=not objective.endswith("-per-row"),
        grad_accum=grad_accum,
    )
    assert trainer.micro_prompts == micro
    assert trainer.gradients.micro_prompts == micro


# --------------------------------------------------------------------------- the math
def test_advantages_on_hand_made_rewards():
    r = torch.tensor([[1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(compute_advantages(r, "none"), r)
    torch.testing.assert_close(
        compute_advantages(r, "mean"), torch.tensor([[1.5, -0.5, -0.5, -0.5], [0.0, 0.0, 0.0, 0.0]])
    )
    # leave-one-out: r_k − mean of the other three
    torch.testing.assert_close(
        compute_advantages(r, "loo"), torch.tensor([[2.0, -2 / 3, -2 / 3, -2 / 3], [0.0, 0.0, 0.0, 0.0]])
    )
    with pytest.raises(T2Error):
        compute_advantages(torch.ones(2, 1), "mean")


def test_token_logprobs_mask_prompt_and_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 0], [4, 0, 0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    lp = token_logprobs(logits, targets, mask)
    ref = F.log_softmax(logits, -1)
    assert lp[0, 0] == pytest.approx(ref[0, 0, 1].item()) and lp[0, 1] == pytest.approx(ref[0, 1, 2].item())
    assert lp[1, 0] == pytest.approx(ref[1, 0, 4].item())
    assert lp[0, 2] == 0 and lp[1, 1] == 0 and lp[1, 2] == 0
    garbage = logits.clone()
    garbage[0, 2] = 1e4
    garbage[1, 1:] = float("nan")  # padded positions never leak into the loss
    assert torch.equal(token_logprobs(garbage, targets, mask), lp)
    # temperature scores the tempered distribution
    assert token_logprobs(logits, targets, mask, 2.0)[0, 0] == pytest.approx(
        F.log_softmax(logits[0, 0] / 2, -1)[1].item()
    )


def test_policy_loss_on_hand_made_numbers():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = policy_loss(logp, mask, adv, normalizer=4)
    # −(1·(−3) + (−1)·(−0.5)) / 4 = 2.5 / 4
    assert loss.item() == pytest.approx(0.625) and stats["pg_loss"] == pytest.approx(0.625)
    kl = torch.tensor([[0.1, 0.2, 5.0], [0.3, 5.0, 5.0]])
    loss, stats = policy_loss(logp, mask, adv, normalizer=4, kl=kl, kl_coef=0.5)
    assert stats["kl"] == pytest.approx(0.6 / 4)
    assert loss.item() == pytest.approx(0.625 + 0.5 * 0.15)


def test_kl_estimators():
    torch.manual_seed(0)
    mask = torch.ones(2, 3)
    p = -torch.rand(2, 3)
    assert torch.equal(kl_k3(p, p, mask), torch.zeros(2, 3))
    assert (kl_k3(p, p - 0.3, mask) > 0).all()
    logits, base = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    lp, lb = F.log_softmax(logits, -1), F.log_softmax(base, -1)
    torch.testing.assert_close(kl_full(logits, base, mask), (lp.exp() * (lp - lb)).sum(-1))
    assert kl_full(logits, logits, mask).abs().max() < 1e-6


def test_make_batch_matches_unpadded_forwards():
    """Left-padded prompts + right-padded completions give the log-probs of each row alone."""
    model = tiny_model("llama")
    prompts = [[5, 6, 7, 8], [9, 10]]
    completions = [[11, 2], [12, 13, 14]]
    batch = make_batch(prompts, completions, pad_id=1)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 11, 2, 1], [1, 1, 9, 10, 12, 13, 14]]
    assert batch.mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits[:, -4:-1]
        lp = token_logprobs(logits, batch.targets, batch.mask)
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            alone = F.log_softmax(model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1], -1)
            want = alone[torch.arange(len(c)), torch.tensor(c)]
            torch.testing.assert_close(lp[i, : len(c)], want, rtol=1e-5, atol=1e-5)


def test_safe_rewards_scores_a_raising_checker_as_wrong():
    task = ParityTask(raise_on=frozenset({"train1"}))
    items = task.load("train")[:3]
    rewards, errors = safe_rewards(task, items, ["w4", "w4", "w3"])
    assert rewards == [1.0, -1.0, -1.0]
    assert len(errors) == 1 and errors[0]["id"] == "train1" and "exploded" in errors[0]["error"]


# --------------------------------------------------------------------------- one step on a tiny model
def test_kl_is_zero_at_init_and_positive_after_z_changes(tmp_path):
    trainer = tiny_trainer(tmp_path, kl_coef=0.1)
    row = trainer.update(trainer.rollout(1))
    assert row["kl"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(torch.randn_like(p) * 0.3)
    row = trainer.update(trainer.rollout(2))
    assert row["kl"] > 1e-6  # a random tiny model is close to uniform, so KLs are small


def test_one_step_raises_logprob_of_rewarded_completions(tmp_path):
    trainer = tiny_trainer(tmp_path, kl_coef=0.0, clip=0.0, lr=1e-3)
    z0 = {n: t.clone() for n, t in trainer.policy.state().items()}
    ro = trainer.rollout(1)
    adv = compute_advantages(ro.rewards, "none").reshape(-1)
    assert (adv > 0).any() and (adv < 0).any()  # a mixed batch
    before = trainer.sequence_logprobs(ro)
    trainer.update(ro)
    after = trainer.sequence_logprobs(ro)
    delta = after - before
    assert any(not torch.equal(z0[n], t) for n, t in trainer.policy.state().items())
    assert (delta * adv).sum() > 0
    assert delta[adv > 0].mean() > delta[adv < 0].mean()


def test_same_completions_whatever_the_generation_grouping(tmp_path):
    """Each prompt's samples come from its own seeded call: the grouping of prompts does not matter."""
    a = tiny_trainer(tmp_path / "a").rollout(3)
    b = tiny_trainer(tmp_path / "b", gen_prompts=1, grad_accum=4).rollout(3)
    assert a.completion_ids == b.completion_ids and torch.equal(a.rewards, b.rewards)


def test_nan_loss_skips_the_step_and_three_stop_the_run(tmp_path, caplog):
    task = ParityTask(nan=True)
    trainer = tiny_trainer(tmp_path, task=task, steps=5)
    z0 = trainer.policy.state()
    with pytest.raises(T2Error, match="NaN/Inf for 3 steps in a row"):
        trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["skipped"] for r in rows)
    assert all(torch.equal(z0[n], t) for n, t in trainer.policy.state().items())
    assert "step skipped" in caplog.text


def test_a_raising_reward_function_is_logged_and_training_goes_on(tmp_path):
    task = ParityTask(raise_on=frozenset(f"train{i}" for i in range(16)))
    result = train(config(tmp_path, steps=2), model=tiny_model(), tokenizer=tiny_tokenizer(), task=task)
    assert result.steps == 2
    assert all(r["reward_mean"] == -1.0 and r["reward_errors"] == 16 for r in result.history)
    lines = (tmp_path / "run" / "reward_errors.jsonl").read_text().splitlines()
    assert len(lines) == 32 and "exploded" in json.loads(lines[0])["error"]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(batch_size=0), "--batch-size must be at least 1"),
        (dict(samples_per_prompt=0), "--samples-per-prompt must be at least 1"),
        (dict(baseline="mean", samples_per_prompt=1), "needs --samples-per-prompt 2"),
        (dict(temperature=0.0), "identical"),
        (dict(grad_accum=3), "--grad-accum 3 must divide"),
        (dict(method="dora"), "--method 'dora' is not one of"),
        (dict(lr=float("nan")), "--lr must be a finite number"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, kw, message):
    with pytest.raises(T2Error, match=message) as exc:
        tiny_trainer(tmp_path, **kw)
    assert "\n" not in str(exc.value)


def test_batch_must_split_evenly_over_processes(tmp_path, monkeypatch):
    from transformer_squared.training import distributed
    from transformer_squared.training import trainer as trainer_module

    monkeypatch.setattr(
        trainer_module, "setup_distributed", lambda device: (distributed.DistInfo(rank=0, world=3), device)
    )
    with pytest.raises(T2Error, match="--batch-size 4 is not divisible by the 3 processes"):
        tiny_trainer(tmp_path)


def test_task_without_train_split_is_refused(tmp_path):
    with pytest.raises(T2Error, match="has no train split"):
        tiny_trainer(tmp_path, task=ParityTask(splits=("val", "test")))
    with pytest.raises(T2Error, match="no val split"):
        tiny_trainer(tmp_path, task=ParityTask(splits=("train",)), eval_every=1)


def test_resume_refuses_another_model_task_or_options(tmp_path):
    train(config(tmp_path), model=tiny_model(), tokenizer=tiny_tokenizer(), task=ParityTask())
    with pytest.raises(T2Error, match="already holds a training run"):
        tiny_trainer(tmp_path)
    with pytest.raises(T2Error, match="was made with model 'tiny-llama'"):
        Trainer(config(tmp_path, resume=True), model=tiny_model(seed=1), tokenizer=tiny_tokenizer(), task=ParityTask())
    with pytest.raises(T2Error, match="trains task 'parity'"):
        tiny_trainer(tmp_path, resume=True, task=ParityTask(name="other"))
    with pytest.raises(T2Error, match="--lr 0.01 \\(now 0.5\\)"):
        tiny_trainer(tmp_path, resume=True, lr=0.5)
    with pytest.raises(T2Error, match="no checkpoint"):
        tiny_trainer(tmp_path / "elsewhere", resume=True)


# --------------------------------------------------------------------------- outputs, baselines
def test_outputs_expert_metrics_plot_and_best_on_val(tmp_path):
    result = train(
        config(tmp_path, steps=3, eval_every=2, checkpoint_every=2),
        model=tiny_model(),
        tokenizer=tiny_tokenizer(),
        task=ParityTask(),
    )
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert {"reward_mean", "kl", "loss", "grad_norm", "tokens_per_s", "seconds", "lr"} <= set(rows[1])
    assert [r["step"] for r in rows if "val_accuracy" in r] == [0, 2, 3]
    assert (out / "train_curve.png").read_bytes()[:4] == b"\x89PNG"
    expert = Expert.load(out)
    assert expert.meta["task"] == "parity" and expert.meta["training"]["trainable_params"] == 192
    assert expert.meta["training"]["best_step"] == result.best_step
    evals = [r for r in rows if "val_accuracy" in r]
    assert all(isinstance(r["val_ref_loglik"], float) for r in evals)  # the parity items have references
    best = max(evals, key=lambda r: (r["val_accuracy"], r["val_ref_loglik"], -r["step"]))
    assert result.best_step == best["step"]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["task"] == "parity"
    assert "labels" not in expert.meta  # only a classification task has a label set


def test_a_classification_expert_keeps_its_label_set(tmp_path):
    task = ParityTask()
    task.labels = ("even", "odd")  # what the classify task has: the labels its prompt lists
    train(config(tmp_path, steps=1, eval_every=1), model=tiny_model(), tokenizer=tiny_tokenizer(), task=task)
    assert Expert.load(tmp_path / "run").meta["labels"] == ["even", "odd"]


def test_lora_rl_and_sft_steps_report_parameter_counts(tmp_path):
    from peft import PeftModel

    for objective in ("rl", "sft"):
        model = tiny_model()
        result = train(
            config(tmp_path / objective, method="lora", objective=objective),
            model=model,
            tokenizer=tiny_tokenizer(),
            task=ParityTask(),
        )
        # rank 16 on q_proj (32→32) and v_proj (32→16) in 2 layers: 2·(16·32+32·16 + 16·32+16·16)
        assert result.trainable_params == 3584
        out = tmp_path / objective / "run"
        assert json.loads((out / "t2_training.json").read_text())["trainable_params"] == 3584
        assert any(r.get("loss") for r in result.history)
        # the adapter folder is a PEFT adapter that reproduces the trained model
        ids = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            want = model(ids).logits
            loaded = PeftModel.from_pretrained(tiny_model(), str(out))
            torch.testing.assert_close(loaded(ids).logits, want)


def test_svf_sft_lowers_the_reference_nll(tmp_path):
    result = train(
        config(tmp_path, objective="sft", steps=4, lr=5e-2, clip=0.0),
        model=tiny_model(),
        tokenizer=tiny_tokenizer(),
        task=ParityTask(),
    )
    nll = [r["nll_per_token"] for r in result.history]
    assert result.trainable_params == 192 and nll[-1] < nll[0]


# --------------------------------------------------------------------------- the CLI
def test_cli_train_help(capsys):
    from transformer_squared.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--samples-per-prompt", "--baseline", "--resume", "--method", "--objective", "--kl-coef"):
        assert flag in text


def test_cli_train_on_a_tiny_model_folder(tiny_model_dir, tmp_path, capsys):
    from transformer_squared.cli import main

    rng = random.Random(0)
    data = tmp_path / "arc.jsonl"
    with open(data, "w") as f:
        for i, split in enumerate(["train"] * 8 + ["val"] * 3 + ["test"] * 3):
            f.write(
                json.dumps(
                    {
                        "question": " ".join(f"w{rng.randrange(5, 128)}" for _ in range(3)),
                        "choices": [f"w{rng.randrange(5, 128)}" for _ in range(4)],
                        "answerKey": "ABCD"[i % 4],
                        "split": split,
                    }
                )
                + "\n"
            )
    out = tmp_path / "expert"
    argv = [
        "train",
        "--task",
        "arc_easy",
        "--source",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--samples-per-prompt",
        "2",
        "--max-new-tokens",
        "4",
        "--eval-every",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "trainable parameters" in capsys.readouterr().out
    expert = Expert.load(out)
    assert expert.meta["task"] == "arc_easy" and expert.num_parameters() == 192
    assert main(argv) == 2  # the folder holds a run now
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume", "--steps", "3"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3


@pytest.mark.slow
def test_one_rl_step_on_the_default_model(default_model, tmp_path):
    model, tokenizer = default_model
    from transformer_squared.tasks import get_task

    cfg = TrainConfig(
        task="arc_easy",
        out=str(tmp_path / "run"),
        steps=1,
        batch_size=1,
        samples_per_prompt=2,
        max_new_tokens=8,
        eval_every=0,
        progress=False,
    )
    result = train(cfg, model=model, tokenizer=tokenizer, task=get_task("arc_easy"))
    row = result.history[-1]
    assert result.trainable_params == 51_840 and not row["skipped"] and row["grad_norm"] > 0


def test_model_selection_breaks_accuracy_ties_by_reference_loglik():
    from types import SimpleNamespace

    from transformer_squared.training import Trainer

    saved = []
    t = Trainer.__new__(Trainer)
    t.best_val = t.best_step = t.best_loglik = t.best_state = None
    t.policy = SimpleNamespace(state=lambda: {"step": len(saved)}, save=lambda *a: saved.append(a))
    t.out, t._name, t._summary = "out", (lambda: "x"), (lambda: {})
    assert t._consider_best(0, 0.0, -1.5)
    assert not t._consider_best(10, 0.0, -1.6)  # same accuracy, references less likely
    assert t._consider_best(20, 0.0, -1.2)  # same accuracy, references more likely
    assert not t._consider_best(30, 0.0, None)  # no references: ties keep the earlier weights
    assert t._consider_best(40, 0.1, -3.0)  # accuracy first
    assert not t._consider_best(50, 0.05, -0.1)
    assert (t.best_step, t.best_val, len(saved)) == (40, 0.1, 3)


# --------------------------------------------------------------------------- the exact objective
def _mc_file(tmp_path, n_train=8, n_val=4, seed=0):
    rng = random.Random(seed)
    path = tmp_path / "mc.jsonl"
    words = [f"w{i}" for i in range(30, 128)]
    with open(path, "w") as f:
        for i, split in enumerate(["train"] * n_train + ["val"] * n_val + ["test"] * 2):
            f.write(
                json.dumps(
                    {
                        "question": " ".join(rng.choice(words) for _ in range(3)),
                        "choices": [" ".join(rng.choice(words) for _ in range(1 + j % 2)) for j in range(4)],
                        "answerKey": "ABCD"[i % 4],
                        "split": split,
                    }
                )
                + "\n"
            )
    return path


def _expected_reward_loss(trainer, items):
    from transformer_squared.scoring import score_options

    total = 0.0
    for item in items:
        with torch.no_grad():
            sc = score_options(trainer.policy.model, trainer.tokenizer, [trainer.task.requests(item, "cloze")])[0]
        pi = torch.softmax(sc.normalised("token").float(), dim=0)
        r = torch.full_like(pi, -1.0)
        r[trainer.task.gold_index(item)] = 1.0
        total -= float((pi * r).sum())
    return total / len(items)


def test_exact_objective_gradient_matches_finite_differences(tmp_path):
    from transformer_squared.tasks import get_task

    task = get_task("arc_easy", source=str(_mc_file(tmp_path)))
    trainer = tiny_trainer(tmp_path, task=task, objective="exact", batch_size=4, kl_coef=0.0, clip=0.0)
    ro = trainer.rollout(1)
    assert ro.completion_ids == [] and ro.rewards is None  # nothing is sampled
    trainer.optimizer.zero_grad(set_to_none=True)
    totals = trainer.accumulate_gradients(ro)
    assert totals["loss"] == pytest.approx(_expected_reward_loss(trainer, ro.items), rel=1e-4, abs=1e-6)
    name, layer = next(iter(trainer.policy.svf.layers.items()))
    j = int(layer.z.grad.abs().argmax())
    eps = 1e-2
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            layer.z[j] += sign * eps
        with torch.no_grad(), trainer.policy.training():
            losses.append(_expected_reward_loss(trainer, ro.items))
        with torch.no_grad():
            layer.z[j] -= sign * eps
    fd = (losses[0] - losses[1]) / (2 * eps)
    assert float(layer.z.grad[j]) == pytest.approx(fd, rel=2e-2, abs=1e-6)


def test_exact_objective_raises_expected_reward_and_logs_learning_signals(tmp_path):
    from transformer_squared.tasks import get_task

    task = get_task("arc_easy", source=str(_mc_file(tmp_path)))
    trainer = tiny_trainer(
        tmp_path,
        task=task,
        objective="exact",
        batch_size=8,
        kl_coef=0.1,
        clip=0.0,
        lr=5e-2,
        steps=6,
        eval_every=3,
        val_limit=None,
    )
    result = trainer.run()
    rows = [r for r in result.history if r["step"] > 0]
    assert rows[-1]["reward_mean"] > rows[0]["reward_mean"]  # same 8 items every step (one epoch per step)
    assert all(r["rms_change"] > 0 and r["kl"] is not None and 0 < r["entropy"] for r in rows)
    assert rows[0]["grad_cos_prev"] is None and rows[1]["grad_cos_prev"] > 0.5  # same items: aligned gradients
    val = [r for r in result.history if "val_accuracy" in r]
    assert [r["step"] for r in val] == [0, 3, 6] and all(r["val_n"] == 4 for r in val)


def test_exact_objective_needs_a_multiple_choice_task(tmp_path):
    with pytest.raises(T2Error, match="multiple-choice"):
        tiny_trainer(tmp_path, objective="exact")


def test_rl_logs_the_share_of_prompts_whose_samples_disagree(tmp_path):
    trainer = tiny_trainer(tmp_path)
    ro = trainer.rollout(1)
    row = trainer.update(ro)
    expected = float((ro.rewards.max(1).values != ro.rewards.min(1).values).float().mean())
    assert row["disagree_frac"] == pytest.approx(expected)
    assert row["rms_change"] > 0


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_shared_prompt_update_matches_per_row_gradients(tmp_path, kl_coef):
    grads, rows = [], []
    for share in (True, False):
        trainer = tiny_trainer(tmp_path / str(share), share_prompt=share, kl_coef=kl_coef, baseline="mean")
        torch.manual_seed(1)
        with torch.no_grad():
            for p in trainer.params:
                p.add_(0.05 * torch.randn_like(p))
        ro = trainer.rollout(1)
        trainer.optimizer.zero_grad(set_to_none=True)
        totals = trainer.accumulate_gradients(ro)
        grads.append(torch.cat([p.grad.flatten() for p in trainer.params]))
        rows.append((ro.completion_ids, totals))
    assert rows[0][0] == rows[1][0]  # the same samples with the prompt prefilled once
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert rows[0][1]["loss"] == pytest.approx(rows[1][1]["loss"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("mode", ["none", "bf16"])
def test_rollouts_are_sampled_under_bf16_autocast_only_when_asked(tmp_path, mode):
    trainer = tiny_trainer(tmp_path, autocast="bf16", sample_autocast=mode, max_new_tokens=3)
    seen: list[bool] = []
    hook = trainer.policy.model.register_forward_pre_hook(lambda m, a: seen.append(torch.is_autocast_enabled("cpu")))
    ro = trainer.rollout(1)
    hook.remove()
    assert seen and set(seen) == {mode == "bf16"}  # every sampling forward, and only under bf16 when asked
    assert all(ro.completion_ids)
    assert trainer.update(ro)["rms_change"] > 0  # the update is unaffected: it takes --autocast


def test_sample_group_draws_what_generate_draws():
    from transformer_squared.generation import generate, sample_group

    model, tok = tiny_model("llama"), tiny_tokenizer()
    tok.pad_token_id, tok.eos_token_id = 1, 2
    prompt = "w5 w6 w7 w8 w9"
    a = sample_group(model, tok, prompt, 4, max_new_tokens=5, temperature=1.0, seed=7)
    b = generate(model, tok, [prompt] * 4, max_new_tokens=5, temperature=1.0, batch_size=4, seed=7)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len({tuple(g.token_ids) for g in a}) > 1


@pytest.mark.parametrize("arch_", ["llama", "gpt2"])
def test_sample_groups_draw_what_generate_draws_for_prompts_of_different_lengths(arch_):
    """Several prompts, left-padded and each prefilled once, sample what generate() samples for their k copies."""
    from transformer_squared.generation import generate, sample_groups

    model, tok = tiny_model(arch_), tiny_tokenizer()
    tok.pad_token_id, tok.eos_token_id = 1, 2
    prompts = ["w5 w6 w7 w8 w9", "w10 w11", "w12 w13 w14"]
    a = sample_groups(model, tok, prompts, 3, max_new_tokens=6, temperature=1.0, seed=11)
    b = generate(
        model, tok, [p for p in prompts for _ in range(3)], max_new_tokens=6, temperature=1.0, batch_size=9, seed=11
    )
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.text for g in a] == [g.text for g in b]
    assert len({tuple(g.token_ids) for g in a}) > 3
    assert sample_groups(model, tok, [], 3) == []


def test_sft_in_an_answer_channel_raises_the_gold_options_likelihood(tmp_path):
    from transformer_squared.tasks import get_task

    task = get_task("arc_easy", source=str(_mc_file(tmp_path)))
    trainer = tiny_trainer(
        tmp_path,
        task=task,
        objective="sft",
        channel="cloze",
        batch_size=8,
        clip=0.0,
        lr=5e-2,
        steps=4,
        eval_every=4,
        val_limit=None,
    )
    result = trainer.run()
    rows = [r for r in result.history if r["step"] > 0]
    assert rows[-1]["gold_logprob"] > rows[0]["gold_logprob"] and rows[-1]["pg_loss"] < rows[0]["pg_loss"]
    assert rows[0]["kl"] is None
    with pytest.raises(T2Error, match="--channel applies"):
        TrainConfig(task="arc_easy", objective="rl", channel="cloze").validate()


class SlowChecker(ParityTask):
    """Standard rewards, but the check of one item never finishes in time."""

    rewards = Task.rewards  # the standard ±1 of the checker (ParityTask overrides it for its NaN case)

    def is_correct(self, item, completion):
        if item.id == "train1":
            import time

            time.sleep(30)
        return super().is_correct(item, completion)


def test_a_checker_that_overruns_scores_wrong_and_is_reported(tmp_path):
    import time

    task = SlowChecker()
    items = task.load("train")[:3]
    t = time.perf_counter()
    rewards, errors = safe_rewards(task, items, ["w10 x", "w10 x", "w10 x"], seconds=0.5)
    assert time.perf_counter() - t < 10
    assert rewards == [1.0, -1.0, 1.0]
    assert [e["id"] for e in errors] == ["train1"] and "timeout" in errors[0]["error"]


def test_a_checkpoint_from_before_an_option_existed_resumes_with_its_default(tmp_path):
    """Options added later (e.g. channel, norm) read as their defaults in an older checkpoint."""
    from transformer_squared.training.checkpoint import load_checkpoint, save_checkpoint

    trainer = tiny_trainer(tmp_path, steps=1, checkpoint_every=1)
    trainer.run()
    folder = tmp_path / "run" / "checkpoint"
    ckpt = load_checkpoint(folder)
    old = dict(ckpt.state)
    old["config"] = {k: v for k, v in old["config"].items() if k not in ("channel", "norm")}
    save_checkpoint(
        folder, state=old, trainable=ckpt.trainable, best=ckpt.best, optimizer=ckpt.optimizer, scheduler=ckpt.scheduler
    )
    resumed = tiny_trainer(tmp_path, steps=2, checkpoint_every=1, resume=True)
    assert resumed.step == 1


def test_the_former_modules_still_import():
    """transformer_squared.rl and .lora are aliases of the training package (and models.apply_adapter)."""
    from transformer_squared import lora, models, rl, training

    assert rl.Trainer is training.Trainer and rl.TrainConfig is training.TrainConfig and rl.train is training.train
    assert set(rl.__all__) >= {
        "Batch",
        "DistInfo",
        "Rollout",
        "SVFPolicy",
        "TrainResult",
        "compute_advantages",
        "kl_full",
        "kl_k3",
        "make_batch",
        "policy_loss",
        "safe_rewards",
        "sample_seed",
        "token_logprobs",
        "write_plot",
    }
    assert all(hasattr(rl, name) for name in rl.__all__)
    assert lora.LoRAPolicy is training.LoRAPolicy and lora.apply_adapter is models.apply_adapter
