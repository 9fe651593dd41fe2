"""What one update logs: the step's sums over all processes and the metrics row made from them.

Each process adds up its share of a step (loss, KL, tokens, rewards, ...) in a :class:`StepSums`;
:meth:`StepSums.reduced` sums them over the processes in a single all-reduce, and :func:`step_row`
turns the global sums into the row that goes to ``metrics.jsonl`` (means over the B·K completions
for RL, over the B items for the exact objective, per token for SFT). :class:`Drift` follows how the
weights move: rms change since the start of the run and the cosine between consecutive gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

import torch

from .config import TrainConfig
from .distributed import DistInfo
from .rollout import Rollout

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.base import TaskProtocol


@dataclass
class StepSums:
    """One step's sums (this process's, or all processes' after :meth:`reduced`)."""

    loss: float
    pg_loss: float
    kl: float
    logp: float
    tokens: float
    finished: float
    reward_errors: float
    reward: float = 0.0
    reward_sq: float = 0.0
    correct: float = 0.0
    entropy: float = 0.0
    disagree: float = 0.0  # RL: prompts whose K samples got different rewards

    @classmethod
    def local(cls, config: TrainConfig, ro: Rollout, totals: Mapping[str, float], task: TaskProtocol) -> StepSums:
        """This process's sums, from its rollout and the totals of :meth:`.Gradients.accumulate`."""
        s = cls(
            totals["loss"],
            totals["pg_loss"],
            totals["kl"],
            totals["logp"],
            float(ro.num_tokens),
            float(sum(ro.finished)),
            float(len(ro.reward_errors)),
        )
        if config.objective == "rl":
            rewards = ro.rewards
            assert rewards is not None  # an RL rollout has its rewards (None only for SFT)
            r = rewards.reshape(-1).double()
            s.reward, s.reward_sq = float(r.sum().item()), float((r * r).sum().item())
            s.correct = float((r == task.reward_correct).sum().item())
            # prompts whose K samples got different rewards: the only ones that carry a gradient
            s.disagree = float((rewards.max(dim=1).values != rewards.min(dim=1).values).sum().item())
        elif config.mc_channel is not None:
            s.reward, s.reward_sq = totals["reward"], totals["reward_sq"]
            s.correct, s.entropy = totals["argmax_correct"], totals["entropy"]
        return s

    def reduced(self, dist: DistInfo, device: torch.device) -> StepSums:
        """The sums over all processes (one all-reduce; the identity with a single process)."""
        local = torch.tensor(astuple(self), dtype=torch.float64, device=device)
        return StepSums(*dist.all_reduce_sum(local).tolist())


def step_row(
    config: TrainConfig,
    k: int,
    s: StepSums,
    *,
    grad_norm: float,
    lr: float,
    finite: bool,
    update_seconds: float,
    backward_seconds: float,
    rms_change: float,
    grad_cos_prev: float | None,
) -> dict[str, Any]:
    """The metrics row of one update from the global sums ``s``; non-finite values become None."""
    c = config
    rl = c.objective == "rl"
    want_kl = (rl or c.objective == "exact") and (c.kl_coef > 0)
    n_rows = c.batch_size * k
    row: dict[str, Any] = {
        "loss": s.loss if finite else None,
        "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
        "lr": lr,
        "skipped": not finite,
        "tokens": int(s.tokens),
        "mean_len": s.tokens / n_rows,
        "update_seconds": round(update_seconds, 3),
        "backward_seconds": round(backward_seconds, 3),
    }
    row.update(rms_change=rms_change, grad_cos_prev=grad_cos_prev)
    if rl:
        mean = s.reward / n_rows
        var = s.reward_sq / n_rows - mean * mean
        row.update(
            reward_mean=mean,
            reward_std=math.sqrt(max(0.0, var)) if math.isfinite(var) else None,
            correct_frac=s.correct / n_rows,
            pg_loss=s.pg_loss if finite else None,
            kl=(s.kl if want_kl else None),
            finished_frac=s.finished / n_rows,
            reward_errors=int(s.reward_errors),
            disagree_frac=s.disagree / c.batch_size,
        )
    elif c.mc_channel is not None:
        row.update(
            reward_mean=s.reward / c.batch_size,
            correct_frac=s.correct / c.batch_size,
            entropy=s.entropy / c.batch_size,
            pg_loss=s.pg_loss if finite else None,
            kl=(s.kl if want_kl else None),
            gold_logprob=s.logp / c.batch_size,
        )
    else:
        row.update(nll_per_token=(-s.logp / s.tokens) if s.tokens else None)
    for key, value in list(row.items()):
        if isinstance(value, float) and not math.isfinite(value):
            row[key] = None
    return row


class Drift:
    """How far the trainable weights have moved, and how consistently (diagnostics in every row)."""

    def __init__(self, start_state: Mapping[str, torch.Tensor]) -> None:
        self.start = {n: t.clone() for n, t in start_state.items()}
        self.prev_grad: torch.Tensor | None = None

    def rms_change(self, state: Mapping[str, torch.Tensor]) -> float:
        """rms of (trainable − its value at the start of the run): rms(z − 1) for a direct SVF expert."""
        sq, n = 0.0, 0
        for name, value in state.items():
            start = self.start.get(name)
            if start is not None:
                sq += float(((value - start) ** 2).sum())
                n += value.numel()
        return math.sqrt(sq / n) if n else 0.0

    def grad_cosine(self, params: Sequence[torch.nn.Parameter]) -> float | None:
        """Cosine between this step's (clipped) gradient and the previous step's: ~0 on pure noise."""
        grads = [p.grad.reshape(-1).float() for p in params if p.grad is not None]
        if not grads:
            return None
        flat = torch.cat(grads).detach().cpu()
        prev, self.prev_grad = self.prev_grad, flat
        if prev is None or prev.shape != flat.shape:
            return None
        denom = float(flat.norm() * prev.norm())
        return float(flat @ prev) / denom if denom > 0 else None


__all__ = ["Drift", "StepSums", "step_row"]
