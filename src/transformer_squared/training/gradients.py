"""The model half of a step: teacher-forced forwards of a :class:`~.rollout.Rollout` and the backward of its loss.

:class:`Gradients` runs the rollout's micro-batches through the policy (with gradients to the
trainable weights) and through the base model (for the KL term, no gradients), turns the
log-probs into the loss with :mod:`.losses` and leaves the gradient in ``.grad``.

* Free text (``rl``, ``sft``): log π of each completion token from one forward of prompt +
  completion, only completion tokens counting (EOS included; prompt and padding masked out).
  With ``share_prompt`` (and no full-vocabulary KL) each prompt is encoded once for its K
  completions (:func:`~transformer_squared.scoring.continuation_token_logprobs`); otherwise each
  row is prompt + completion, left/right padded (:func:`~transformer_squared.scoring.make_batch`).
* Multiple choice (``exact``, ``sft`` in an answer channel): every option of an item is scored
  in the channel (:func:`~transformer_squared.scoring.score_options`) and
  :func:`~.losses.exact_objective` gives the item's loss.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Any

import torch

from ..scoring import Batch, make_batch, token_logprobs
from .config import TrainConfig
from .losses import compute_advantages, exact_objective, kl_full, kl_k3, policy_loss
from .policies import Policy
from .rollout import Rollout

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from ..tasks.base import TaskProtocol


class Gradients:
    """Forwards and backwards of one run's policy, ``micro_prompts`` prompts (or items) at a time.

    Holds the run's ``config`` and ``policy`` objects themselves, so a change to them (a benchmark
    switching ``config.autocast``) applies to the next call.
    """

    def __init__(
        self,
        config: TrainConfig,
        policy: Policy,
        task: TaskProtocol,
        tokenizer: PreTrainedTokenizerBase,
        *,
        micro_prompts: int,
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.config, self.policy, self.task, self.tokenizer = config, policy, task, tokenizer
        self.micro_prompts, self.pad_id, self.device = micro_prompts, pad_id, device
        fwd = policy.forward_module().forward
        self.keep_kw = "logits_to_keep" in inspect.signature(fwd).parameters

    def autocast(self) -> contextlib.AbstractContextManager:
        from ..models import autocast

        return autocast(self.config.autocast, self.device, self.policy.model)

    def _logits(self, batch: Batch) -> torch.Tensor:
        """Logits at the positions that predict the completion tokens: (n, C, V)."""
        c_len = batch.completion_len
        kwargs: dict[str, Any] = dict(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        if self.keep_kw:
            from ..scoring import keep_last

            kwargs["logits_to_keep"] = keep_last(c_len + 1, batch.input_ids.shape[1], batch.input_ids.device)
        logits = self.policy.model(**kwargs).logits
        return logits[:, -(c_len + 1) : -1]

    def _shared(self, ro: Rollout) -> bool:
        """Whether the update encodes each prompt once for its completions (k3 or no KL needs no full logits)."""
        c = self.config
        return (
            c.share_prompt and ro.k > 1 and not (c.kl_coef > 0 and c.kl_estimator == "full") and all(ro.completion_ids)
        )

    def _shared_logprobs(self, ro: Rollout, p0: int, p1: int, temp: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (n, C) and mask of prompts p0..p1's completions, each prompt encoded once."""
        from ..scoring import continuation_token_logprobs

        k = ro.k
        groups = [(ro.prompt_ids[p], ro.completion_ids[p * k : (p + 1) * k]) for p in range(p0, p1)]
        return continuation_token_logprobs(self.policy.model, groups, self.pad_id, temperature=temp)

    def _rows(self, ro: Rollout, p0: int, p1: int) -> tuple[list[list[int]], list[list[int]]]:
        k = ro.k
        prompts = [ro.prompt_ids[p] for p in range(p0, p1) for _ in range(k)]
        return prompts, ro.completion_ids[p0 * k : p1 * k]

    def sequence_logprobs(self, ro: Rollout, base: bool = False) -> torch.Tensor:
        """Σ_t log π(y_t) of each completion of a rollout (no gradient), in rollout order."""
        out = []
        temp = self.config.temperature if self.config.objective == "rl" else 1.0
        ctx = self.policy.base() if base else self.policy.training()
        with torch.no_grad(), ctx, self.autocast():
            for p0 in range(0, len(ro.items), self.micro_prompts):
                p1 = min(len(ro.items), p0 + self.micro_prompts)
                if self._shared(ro):
                    lp, _ = self._shared_logprobs(ro, p0, p1, temp)
                    out.append(lp.sum(dim=1).cpu())
                    continue
                batch = make_batch(*self._rows(ro, p0, p1), self.pad_id, self.device)
                lp = token_logprobs(self._logits(batch), batch.targets, batch.mask, temp)
                out.append(lp.sum(dim=1).cpu())
        return torch.cat(out)

    def accumulate(self, ro: Rollout) -> dict[str, float]:
        """Forward and backward over the micro-batches of a rollout; gradients are left in ``.grad``.

        Returns this process's sums of loss, pg_loss, kl and completion log-prob.
        """
        c = self.config
        channel = c.mc_channel
        if channel:
            return self._exact(ro, channel)
        rl = c.objective == "rl"
        k = ro.k
        n_global = c.batch_size * k
        if rl:
            assert ro.rewards is not None  # an RL rollout has its rewards (None only for SFT)
            adv = compute_advantages(ro.rewards, c.baseline).reshape(-1)
        else:
            adv = torch.ones(len(ro.items))
        temp = c.temperature if rl else 1.0
        want_kl = rl and (c.kl_coef > 0)
        totals = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "logp": 0.0}
        for p0 in range(0, len(ro.items), self.micro_prompts):
            p1 = min(len(ro.items), p0 + self.micro_prompts)
            a = adv[p0 * k : p1 * k].to(self.device)
            if self._shared(ro):
                with self.autocast():
                    base_lp = None
                    if want_kl:
                        with torch.no_grad(), self.policy.base():
                            base_lp, _ = self._shared_logprobs(ro, p0, p1, temp)
                    with self.policy.training():
                        logp, mask = self._shared_logprobs(ro, p0, p1, temp)
                    kl = kl_k3(logp, base_lp, mask) if base_lp is not None else None
                    loss, stats = policy_loss(logp, mask, a, n_global, kl, c.kl_coef)
                loss.backward()
                del logp, kl, loss
                for key in totals:
                    totals[key] += stats.get(key, 0.0)
                continue
            batch = make_batch(*self._rows(ro, p0, p1), self.pad_id, self.device)
            with self.autocast():
                base_lp = base_logits = None
                if want_kl:
                    with torch.no_grad(), self.policy.base():
                        base_logits = self._logits(batch)
                        if c.kl_estimator == "k3":
                            base_lp = token_logprobs(base_logits, batch.targets, batch.mask, temp)
                            base_logits = None
                with self.policy.training():
                    logits = self._logits(batch)
                logp = token_logprobs(logits, batch.targets, batch.mask, temp)
                kl = None
                if want_kl:
                    if base_lp is not None:
                        kl = kl_k3(logp, base_lp, batch.mask)
                    else:
                        assert base_logits is not None  # kept for the full KL (kl_estimator != "k3")
                        kl = kl_full(logits, base_logits, batch.mask, temp)
                loss, stats = policy_loss(logp, batch.mask, a, n_global, kl, c.kl_coef)
            loss.backward()
            del logits, logp, kl, loss, base_logits
            for key in totals:
                totals[key] += stats.get(key, 0.0)
        return totals

    def _exact(self, ro: Rollout, channel: str) -> dict[str, float]:
        """The exact policy gradient over each item's options (:func:`~.losses.exact_objective`).

        Returns this process's sums of loss, pg_loss (−E[r]), kl, log π(gold), E[r], E[r²], items whose
        most likely option is gold, and the policy's entropy.
        """
        from ..scoring import score_options
        from ..tasks.multiple_choice import is_multiple_choice

        task = self.task
        assert is_multiple_choice(task)  # load_items refuses an options objective on other tasks
        c = self.config
        sft = c.objective == "sft"  # maximise the gold option's (normalised) log-likelihood instead of E[r]
        want_kl = c.kl_coef > 0 and not sft
        totals = dict.fromkeys(
            ("loss", "pg_loss", "kl", "logp", "reward", "reward_sq", "argmax_correct", "entropy"), 0.0
        )
        for p0 in range(0, len(ro.items), self.micro_prompts):
            items = ro.items[p0 : p0 + self.micro_prompts]
            requests = [task.requests(it, channel, self.tokenizer) for it in items]
            with self.autocast():
                base = None
                if want_kl:
                    with torch.no_grad(), self.policy.base():
                        base = score_options(self.policy.model, self.tokenizer, requests, batch_size=len(items))
                with self.policy.training():
                    scores = score_options(self.policy.model, self.tokenizer, requests, batch_size=len(items))
            loss = torch.zeros((), device=self.device)
            for i, (item, sc) in enumerate(zip(items, scores, strict=True)):
                item_loss, stats = exact_objective(
                    sc.normalised(c.norm),
                    task.gold_index(item),
                    reward_correct=task.reward_correct,
                    reward_wrong=task.reward_wrong,
                    temperature=c.temperature,
                    sft=sft,
                    base_scores=None if base is None else base[i].normalised(c.norm),
                    kl_coef=c.kl_coef,
                )
                # the objective's own term, without the KL
                totals["pg_loss"] += stats["pg_loss"] / c.batch_size
                if "kl" in stats:
                    totals["kl"] += stats["kl"] / c.batch_size
                loss = loss + item_loss / c.batch_size
                for key in ("reward", "reward_sq", "argmax_correct", "entropy", "logp"):
                    totals[key] += stats[key]
            loss.backward()
            totals["loss"] += loss.item()
        return totals


__all__ = ["Gradients"]
