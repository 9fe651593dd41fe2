"""The optimiser: AdamW over the trainable weights, its LR schedule, and one step of it.

The LR is ``config.lr`` times :func:`lr_factor`: a linear warmup over ``warmup_steps``, then
constant or a cosine decay to 0 at ``steps``. :func:`clip_gradients` clips the (already summed
over processes) gradient norm to ``config.clip``; :func:`step_or_skip` applies the step when the
loss and gradient are finite and otherwise drops the gradients. Either way the schedule advances,
so a skipped step does not shift the LR of the steps after it.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import torch

from .config import TrainConfig


def lr_factor(config: TrainConfig, step: int) -> float:
    """LR multiplier for the optimiser step with index ``step`` (0-based): warmup, then the schedule."""
    c = config
    if c.warmup_steps and step < c.warmup_steps:
        return (step + 1) / c.warmup_steps
    if c.schedule == "constant":
        return 1.0
    span = max(1, c.steps - c.warmup_steps)
    progress = min(1.0, (step - c.warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    config: TrainConfig, params: Sequence[torch.nn.Parameter]
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` and its :func:`lr_factor` schedule."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, config))


def clip_gradients(config: TrainConfig, params: Sequence[torch.nn.Parameter]) -> float:
    """Clip the gradient norm to ``config.clip`` (no clipping when it is 0); the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(grads, config.clip if config.clip > 0 else float("inf")).item()


def step_or_skip(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, finite: bool
) -> None:
    """An optimiser step if ``finite`` (else none), then clear the gradients and advance the schedule."""
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
        warnings.filterwarnings("ignore", message="Detected call of", category=UserWarning)
        scheduler.step()


__all__ = ["clip_gradients", "lr_factor", "make_optimizer", "step_or_skip"]
