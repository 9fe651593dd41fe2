"""The loss math on plain tensors: advantages, KL estimators, the REINFORCE / SFT loss, the exact objective.

No model, no config: every function here takes tensors and numbers and is tested on hand-made
values (tests/test_train.py, tests/test_losses.py). The trainer's forwards (:mod:`.gradients`)
produce the inputs.

* ``objective="rl"``: :func:`compute_advantages` of the sampled rewards, then :func:`policy_loss`
  −Σ_i A_i Σ_t log π(y_it) / N (+ λ Σ_i Σ_t KL_it / N, with :func:`kl_k3` or :func:`kl_full`).
* ``objective="sft"`` (free text): :func:`policy_loss` with every advantage 1 and no KL, i.e. the
  reference solutions' negative log-likelihood −Σ_i Σ_t log π(ref_it) / B.
* ``objective="exact"`` and ``sft`` in an answer channel: :func:`exact_objective` on one item's
  option scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import T2Error
from .config import BASELINES


def compute_advantages(rewards: torch.Tensor, baseline: str = "none") -> torch.Tensor:
    """Advantages (P, K) from rewards (P, K): r, r − mean_k r, or r − mean of the other K−1."""
    if rewards.dim() != 2:
        raise ValueError("rewards must be (prompts, samples)")
    if baseline == "none":
        return rewards.clone()
    k = rewards.shape[1]
    if k < 2:
        raise T2Error(f"baseline {baseline!r} needs at least 2 samples per prompt")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if baseline == "mean":
        return centred
    if baseline == "loo":
        return centred * (k / (k - 1))
    raise T2Error(f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}")


def kl_k3(logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_base) at sampled tokens: exp(b − p) − (b − p) − 1 ≥ 0."""
    d = (base_logp - logp) * mask
    return (torch.exp(d) - d - 1) * mask


def kl_full(
    logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position exact KL(π‖π_base) = Σ_v π_v (log π_v − log b_v), masked."""
    t = temperature if temperature > 0 else 1.0
    lp = F.log_softmax(logits.float() / t, dim=-1)
    lb = F.log_softmax(base_logits.float() / t, dim=-1)
    return F.kl_div(lb, lp, log_target=True, reduction="none").sum(-1) * mask


def policy_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    normalizer: float,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE loss −Σ_i A_i Σ_t log π(y_it) / N (+ λ Σ_i Σ_t KL_it / N) for a (micro-)batch.

    ``logp`` / ``kl`` are (n, T) per-token values, ``mask`` marks completion tokens, ``advantages``
    is (n,), ``normalizer`` is N, the number of completions in the whole (global) batch, so that
    micro-batch and per-process losses add up to the loss of the full batch.
    """
    seq_logp = (logp * mask).sum(dim=1)
    pg = -(advantages.to(seq_logp.dtype) * seq_logp).sum() / normalizer
    loss = pg
    stats = {"pg_loss": pg.item(), "logp": seq_logp.detach().sum().item()}
    if kl is not None:
        kl_sum = (kl * mask).sum() / normalizer
        if kl_coef:
            loss = loss + kl_coef * kl_sum
        stats["kl"] = kl_sum.item()
    stats["loss"] = loss.item()
    return loss, stats


def exact_objective(
    scores: torch.Tensor,
    gold: int,
    *,
    reward_correct: float = 1.0,
    reward_wrong: float = -1.0,
    temperature: float = 1.0,
    sft: bool = False,
    base_scores: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One multiple-choice item's loss from its option scores s_j (already normalised, shape (options,)).

    The policy is π = softmax(s / T) over the options and r_j is ``reward_correct`` for the gold
    option, ``reward_wrong`` otherwise. The objective term is −E_π[r] = −Σ_j π_j r_j (its gradient
    is the exact policy gradient), or −s_gold with ``sft`` (raise the gold option's score). With
    ``base_scores`` the loss adds λ·KL(π‖π_base) over the options.

    Returns (loss, stats) with stats ``pg_loss`` (the objective term, without the KL), ``kl`` (when
    ``base_scores`` is given), ``reward`` (E_π[r]), ``reward_sq`` (E_π[r²]), ``argmax_correct``
    (1.0 if the most likely option is gold), ``entropy`` of π and ``logp`` (log π_gold).
    """
    logpi = F.log_softmax(scores.float() / temperature, dim=0)
    pi = logpi.exp()
    r = torch.full_like(pi, reward_wrong)
    r[gold] = reward_correct
    expected = (pi * r).sum()
    loss = -scores[gold].float() if sft else -expected
    stats = {"pg_loss": loss.item()}
    if base_scores is not None:
        logb = F.log_softmax(base_scores.float() / temperature, dim=0)
        kl = (pi * (logpi - logb.to(logpi.device))).sum()
        loss = loss + kl_coef * kl
        stats["kl"] = kl.item()
    stats.update(
        reward=expected.item(),
        reward_sq=(pi * r * r).sum().item(),
        argmax_correct=float(int(torch.argmax(logpi).item()) == gold),
        entropy=-(pi * logpi).sum().item(),
        logp=logpi[gold].item(),
    )
    return loss, stats


__all__ = ["compute_advantages", "exact_objective", "kl_full", "kl_k3", "policy_loss"]
