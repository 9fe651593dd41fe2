"""The exact multiple-choice objective and the SFT loss on hand-made numbers (training/losses.py).

Advantages, the KL estimators and the REINFORCE loss are pinned in test_train.py."""

from __future__ import annotations

import math

import pytest
import torch

from transformer_squared.training.losses import exact_objective, policy_loss


def test_exact_objective_is_minus_the_expected_reward():
    scores = torch.log(torch.tensor([1.0, 3.0]))  # π = (0.25, 0.75) at T = 1
    loss, stats = exact_objective(scores, gold=1)
    # E[r] = 0.25·(−1) + 0.75·(+1) = 0.5
    assert loss.item() == pytest.approx(-0.5) and stats["pg_loss"] == pytest.approx(-0.5)
    assert stats["reward"] == pytest.approx(0.5) and stats["reward_sq"] == pytest.approx(1.0)
    assert stats["argmax_correct"] == 1.0 and stats["logp"] == pytest.approx(math.log(0.75))
    assert stats["entropy"] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert "kl" not in stats
    _, wrong = exact_objective(scores, gold=0, reward_correct=2.0, reward_wrong=0.0)
    assert wrong["reward"] == pytest.approx(0.5) and wrong["argmax_correct"] == 0.0


def test_exact_objective_gradient_is_the_exact_policy_gradient():
    scores = torch.log(torch.tensor([1.0, 9.0])).requires_grad_()
    loss, _ = exact_objective(scores, gold=1, temperature=2.0)  # π = softmax(s / 2) = (0.25, 0.75)
    loss.backward()
    # ∂E[r]/∂s_j = π_j (r_j − E[r]) / T = (0.25·(−1.5), 0.75·0.5) / 2
    torch.testing.assert_close(scores.grad, torch.tensor([0.1875, -0.1875]))


def test_exact_objective_kl_over_the_options():
    scores = torch.log(torch.tensor([1.0, 3.0]))
    loss, stats = exact_objective(scores, gold=1, base_scores=torch.zeros(2), kl_coef=0.5)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert stats["kl"] == pytest.approx(kl)
    assert stats["pg_loss"] == pytest.approx(-0.5)  # the objective term alone
    assert loss.item() == pytest.approx(-0.5 + 0.5 * kl)


def test_exact_objective_sft_raises_the_gold_score_untempered():
    scores = torch.tensor([-1.0, -2.5, -0.5])
    loss, stats = exact_objective(scores, gold=1, temperature=2.0, sft=True)
    assert loss.item() == pytest.approx(2.5) and stats["pg_loss"] == pytest.approx(2.5)
    assert stats["argmax_correct"] == 0.0


def test_sft_on_free_text_is_the_reference_nll_per_sequence():
    """objective sft: policy_loss with every advantage 1 is −Σ_i Σ_t log π(ref_it) / B."""
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -7.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, stats = policy_loss(logp, mask, torch.ones(2), normalizer=2)
    assert loss.item() == pytest.approx(3.5 / 2) and stats["logp"] == pytest.approx(-3.5)
    assert "kl" not in stats
