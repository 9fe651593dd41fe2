"""The training loop: :class:`Trainer` (rollout, update, evaluate, run) and :func:`train`.

One step: :meth:`Trainer.rollout` (:mod:`.rollout`), then :meth:`Trainer.update`: the loss's
backward over micro-batches (:mod:`.gradients`, :mod:`.losses`), the gradient sum over processes
(:mod:`.distributed`), clipping and an AdamW step with a constant or cosine LR (:mod:`.optim`); a
NaN/Inf loss or gradient skips the step (three in a row stop the run); the step's metrics row
comes from :mod:`.step_stats`. Every ``eval_every`` steps the policy is evaluated on the task's
``val`` split (never ``test``; :mod:`.validation`) and the best weights are saved (:mod:`.run_dir`);
rows go to ``metrics.jsonl`` (:mod:`.report`), checkpoints to ``checkpoint/`` (:mod:`.checkpoint`),
from which ``resume`` continues. See the package docstring and docs/training.md.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import T2Error
from ..fileio import append_jsonl, write_json
from ..models import model_name
from . import report, run_dir
from .checkpoint import CHECKPOINT_DIR, load_checkpoint, save_checkpoint, set_rng_state
from .config import TrainConfig, auto_micro_prompts
from .distributed import all_reduce_grads, setup_distributed
from .gradients import Gradients
from .optim import clip_gradients, make_optimizer, step_or_skip
from .policies import Policy, make_policy
from .rollout import Rollout, collect_rollout, load_items
from .step_stats import Drift, StepSums, step_row
from .validation import evaluate_val, expert_summary

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from ..tasks.base import TaskProtocol

log = logging.getLogger(__name__)

# Consecutive non-finite steps that stop a run.
MAX_BAD_STEPS = 3


@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0's view under torchrun)."""

    out: Path
    method: str
    objective: str
    steps: int
    best_step: int | None
    best_val_accuracy: float | None
    trainable_params: int
    seconds: float
    history: list[dict[str, Any]]
    state: dict[str, torch.Tensor]
    skipped_steps: int = 0


class Trainer:
    """Holds the model, policy, optimiser and data order of one run; :meth:`run` trains.

    ``model``/``tokenizer``/``task`` may be given (tests, notebooks); otherwise they are loaded
    from ``config.model`` and ``config.task``. Lower-level pieces (:meth:`rollout`, :meth:`update`,
    :meth:`sequence_logprobs`) are public for tests and benchmarks.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        task: TaskProtocol | None = None,
    ) -> None:
        config.validate()
        self.config = c = config
        self.dist, self.device_name = setup_distributed(c.device)
        try:
            self._setup(model, tokenizer, task)
        except BaseException:
            self.dist.close()
            raise

    # -- setup ----------------------------------------------------------------------------
    def _setup(
        self, model: nn.Module | None, tokenizer: PreTrainedTokenizerBase | None, task: TaskProtocol | None
    ) -> None:
        c, d = self.config, self.dist
        if c.batch_size % d.world:
            raise T2Error(
                f"--batch-size {c.batch_size} is not divisible by the {d.world} processes; use a multiple of {d.world}"
            )
        self.local_prompts = c.batch_size // d.world
        if self.local_prompts % c.gen_prompts:
            raise T2Error(
                f"--gen-prompts {c.gen_prompts} must divide the {self.local_prompts} prompts "
                "each process handles per step"
            )
        if c.grad_accum and self.local_prompts % c.grad_accum:
            raise T2Error(
                f"--grad-accum {c.grad_accum} must divide the {self.local_prompts} prompts each "
                "process handles per step (batch size / processes)"
            )

        self.out = Path(c.out)
        resume_from = run_dir.check_out(c)
        self.task, self.train_items, self.val_items = load_items(c, task)
        self.max_new_tokens = c.max_new_tokens or int(getattr(self.task, "max_new_tokens", 256))
        self.micro_prompts = auto_micro_prompts(c, self.local_prompts, self.max_new_tokens)

        # the model and what is trained
        from ..models import load_model, prepare_tokenizer

        if model is None:
            model, tokenizer = load_model(c.model, dtype=c.dtype, device=self.device_name, progress=c.progress)
        elif tokenizer is None:
            raise T2Error("pass the tokenizer together with the model")
        prepare_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        model.eval()
        self.model_name = model_name(model, c.model)
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        self.policy: Policy = make_policy(c, model)
        self.params = self.policy.parameters()
        self.device = self.params[0].device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.gradients = Gradients(
            c,
            self.policy,
            self.task,
            tokenizer,
            micro_prompts=self.micro_prompts,
            pad_id=self.pad_id,
            device=self.device,
        )

        self.optimizer, self.scheduler = make_optimizer(c, self.params)

        # run state
        self.step = 0
        self.best_val: float | None = None
        self.best_loglik: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_streak = 0
        self.skipped = 0
        self.history: list[dict[str, Any]] = []
        self._perm_cache: tuple[int, list[int]] | None = None
        self.drift = Drift(self.policy.state())
        if resume_from is not None:
            ckpt = load_checkpoint(resume_from)
            run_dir.check_resume(ckpt.state, ckpt.folder, self._identity(), c)
            self._restore(ckpt)
        else:
            run_dir.clear_previous_run(self.out, d)

    @property
    def trainable_params(self) -> int:
        return self.policy.num_trainable()

    # -- resume and checkpoints -----------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return run_dir.run_identity(self.config, self.model_name, self.policy.fingerprint, self.task)

    def _restore(self, ckpt) -> None:
        s = ckpt.state
        self.policy.load_state(ckpt.trainable)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        set_rng_state(ckpt.rng)
        self.step = int(s["step"])
        self.best_val = s.get("best_val")
        self.best_loglik = s.get("best_loglik")
        self.best_step = s.get("best_step")
        self.best_state = ckpt.best
        self.bad_streak = int(s.get("bad_streak", 0))
        self.skipped = int(s.get("skipped", 0))
        self.history = report.read_metrics(self.out, self.step)
        self.dist.barrier()
        if self.dist.main:
            # Forget what the killed run logged after its last checkpoint; re-save the best weights
            # in case that run had overwritten them with a later, now undone, step.
            report.write_metrics(self.out, self.history)
            if self.best_state is not None:
                self.policy.save(self.out, self.best_state, self._name(), self._summary())
        self.dist.barrier()

    def _save_checkpoint(self) -> None:
        state = {
            **self._identity(),
            "step": self.step,
            "position": self.step * self.config.batch_size,
            "best_val": self.best_val,
            "best_loglik": self.best_loglik,
            "best_step": self.best_step,
            "bad_streak": self.bad_streak,
            "skipped": self.skipped,
            "world_size": self.dist.world,
            "config": self.config.to_dict(),
        }
        save_checkpoint(
            self.out / CHECKPOINT_DIR,
            state=state,
            trainable=self.policy.state(),
            best=self.best_state,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
        )

    # -- data -----------------------------------------------------------------------------
    def item_at(self, position: int):
        """The train item at a position of the endless, per-epoch reshuffled order."""
        n = len(self.train_items)
        epoch, offset = divmod(position, n)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            order = list(range(n))
            random.Random(f"t2-train-order/{self.config.seed}/{epoch}").shuffle(order)
            self._perm_cache = (epoch, order)
        return self.train_items[self._perm_cache[1][offset]]

    def _local_indices(self) -> range:
        start = self.dist.rank * self.local_prompts
        return range(start, start + self.local_prompts)

    # -- one step -------------------------------------------------------------------------
    def rollout(self, step: int) -> Rollout:
        """This process's prompts of ``step`` (1-based) with K sampled completions and rewards (or references)."""
        base = (step - 1) * self.config.batch_size
        indices = list(self._local_indices())
        items = [self.item_at(base + g) for g in indices]
        return collect_rollout(
            step,
            items,
            indices,
            config=self.config,
            task=self.task,
            policy=self.policy,
            tokenizer=self.tokenizer,
            max_new_tokens=self.max_new_tokens,
            eos_id=self.eos_id,
        )

    def sequence_logprobs(self, ro: Rollout, base: bool = False) -> torch.Tensor:
        """Σ_t log π(y_t) of each completion of a rollout (no gradient), in rollout order."""
        return self.gradients.sequence_logprobs(ro, base=base)

    def accumulate_gradients(self, ro: Rollout) -> dict[str, float]:
        """Forward and backward over the micro-batches of a rollout; gradients are left in ``.grad``.

        Returns this process's sums of loss, pg_loss, kl and completion log-prob (see :class:`.Gradients`).
        """
        return self.gradients.accumulate(ro)

    def update(self, ro: Rollout) -> dict[str, Any]:
        """Loss, backward over micro-batches, all-reduce, clip and optimiser step (or skip if non-finite)."""
        c, d = self.config, self.dist
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals = self.accumulate_gradients(ro)
        t_backward = time.perf_counter() - t0

        # gradients: sum over processes (each loss is already divided by the global N)
        all_reduce_grads(d, self.params)
        sums = StepSums.local(c, ro, totals, self.task).reduced(d, self.device)
        norm = clip_gradients(c, self.params)
        grad_cos = self.drift.grad_cosine(self.params)
        lr = float(self.scheduler.get_last_lr()[0])
        finite = math.isfinite(sums.loss) and math.isfinite(norm)
        step_or_skip(self.optimizer, self.scheduler, finite)
        if finite:
            self.bad_streak = 0
        else:
            self.bad_streak += 1
            self.skipped += 1
        return step_row(
            c,
            ro.k,
            sums,
            grad_norm=norm,
            lr=lr,
            finite=finite,
            update_seconds=time.perf_counter() - t0,
            backward_seconds=t_backward,
            rms_change=self.drift.rms_change(self.policy.state()),
            grad_cos_prev=grad_cos,
        )

    # -- validation and saving ------------------------------------------------------------
    def evaluate_val(self) -> tuple[float, int, float, float | None]:
        """(accuracy, n, seconds, tie-breaker log-likelihood or None) on the val items (rank 0 only).

        Greedy accuracy, or options scored in the trained channel; see :func:`.validation.evaluate_val`.
        """
        return evaluate_val(self.config, self.policy, self.tokenizer, self.task, self.val_items, self.max_new_tokens)

    def _name(self) -> str:
        return self.config.name or self.task.name

    def _summary(self) -> dict[str, Any]:
        return expert_summary(
            self.config,
            self.task,
            model_name=self.model_name,
            best_step=self.best_step,
            best_val=self.best_val,
            val_n=len(self.val_items),
            max_new_tokens=self.max_new_tokens,
            world_size=self.dist.world,
            trainable_params=self.trainable_params,
        )

    def _consider_best(self, step: int, accuracy: float, loglik: float | None = None) -> bool:
        """Keep and save these weights if they beat the best so far (:func:`~.run_dir.is_better`)."""
        if not run_dir.is_better(accuracy, loglik, self.best_val, self.best_loglik):
            return False
        self.best_val, self.best_step, self.best_loglik = accuracy, step, loglik
        self.best_state = self.policy.state()
        self.policy.save(self.out, self.best_state, self._name(), self._summary())
        return True

    # -- the loop -------------------------------------------------------------------------
    def run(self, on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Train until ``config.steps``; ``on_step(row)`` is called after each step (after its checkpoint)."""
        c, d = self.config, self.dist
        t_run = time.perf_counter()
        main = d.main
        writer = report.tensorboard_writer(self.out) if main and c.tensorboard else None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(
                self.out / run_dir.CONFIG_NAME,
                {
                    **self._identity(),
                    "trainable_params": self.trainable_params,
                    "policy": self.policy.describe(),
                    "world_size": d.world,
                    "train_items": len(self.train_items),
                    "val_items": len(self.val_items),
                    "config": c.to_dict(),
                },
            )
            self._say(
                f"t2 train: {c.method}/{c.objective} on {self.task.name} ({len(self.train_items)} train, "
                f"{len(self.val_items)} val items), model {self.model_name}; {self.policy.describe()}; "
                f"trainable parameters: {self.trainable_params:,}"
                + (f"; resuming at step {self.step}" if self.step else "")
            )
        if self.step == 0 and c.eval_every and c.eval_at_start:
            row: dict[str, Any] = {"step": 0, "trainable_params": self.trainable_params}
            if main:
                acc, n, secs, ll = self.evaluate_val()
                self._consider_best(0, acc, ll)
                row.update(val_accuracy=acc, val_n=n, val_ref_loglik=ll, eval_seconds=round(secs, 3), best=True)
                self._log(row, writer)
            d.barrier()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=c.steps,
            initial=self.step,
            disable=not (c.progress and main),
            desc=f"train {self.task.name}",
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.step < c.steps:
                step = self.step + 1
                t0 = time.perf_counter()
                ro = self.rollout(step)
                row = {"step": step, **self.update(ro)}
                self.step = step
                secs = time.perf_counter() - t0
                row.update(
                    gen_seconds=round(ro.gen_seconds, 3),
                    reward_seconds=round(ro.reward_seconds, 3),
                    seconds=round(secs, 3),
                    tokens_per_s=row["tokens"] / secs if secs > 0 else None,
                    elapsed=round(time.perf_counter() - t_run, 3),
                    trainable_params=self.trainable_params,
                )
                if ro.reward_errors and main:
                    append_jsonl(self.out / run_dir.REWARD_ERRORS_NAME, ro.reward_errors)
                    log.warning(
                        "step %d: the reward function raised for %d completion(s), scored as wrong: %s",
                        step,
                        len(ro.reward_errors),
                        ro.reward_errors[0]["error"],
                    )
                if row["skipped"]:
                    log.warning(
                        "step %d: loss or gradient is NaN/Inf; step skipped (%d in a row)", step, self.bad_streak
                    )
                if c.eval_every and (step % c.eval_every == 0 or step == c.steps):
                    if main:
                        acc, n, esecs, ll = self.evaluate_val()
                        row.update(
                            val_accuracy=acc,
                            val_n=n,
                            val_ref_loglik=ll,
                            eval_seconds=round(esecs, 3),
                            best=self._consider_best(step, acc, ll),
                        )
                    d.barrier()
                if main:
                    self._log(row, writer)
                    bar.update(1)
                    bar.set_postfix(report.progress_postfix(row, self.best_val))
                if (c.checkpoint_every and step % c.checkpoint_every == 0) or step == c.steps:
                    if main:
                        self._save_checkpoint()
                    d.barrier()
                if self.bad_streak >= MAX_BAD_STEPS:
                    raise T2Error(
                        f"the loss or gradient was NaN/Inf for {MAX_BAD_STEPS} steps in a row (up to step "
                        f"{step}); lower --lr, check the task's rewards, or use --dtype float32 "
                        "(the last checkpoint is in the --out folder)"
                    )
                if on_step is not None:
                    on_step(row)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if main:
            if not c.eval_every:
                self.best_state, self.best_step = self.policy.state(), self.step
                self.policy.save(self.out, self.best_state, self._name(), self._summary())
            self._plot()
            if self.best_val is not None:
                self._say(f"best val accuracy {self.best_val:.1%} at step {self.best_step}; saved to {self.out}")
            else:
                self._say(f"saved the weights of step {self.step} to {self.out}")
        d.barrier()
        return TrainResult(
            out=self.out,
            method=c.method,
            objective=c.objective,
            steps=self.step,
            best_step=self.best_step,
            best_val_accuracy=self.best_val,
            trainable_params=self.trainable_params,
            seconds=time.perf_counter() - t_run,
            history=list(self.history),
            state=self.policy.state(),
            skipped_steps=self.skipped,
        )

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        self.dist.close()

    # -- reporting ------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        report.say(text, self.config.progress)

    def _log(self, row: dict[str, Any], writer) -> None:
        self.history.append(row)
        report.log_row(self.out, row, writer)
        if "val_accuracy" in row and row["step"] > 0:
            self._plot()

    def _plot(self) -> None:
        """train_curve.png: reward (or SFT loss) and val accuracy against the step."""
        report.plot(self.out, self.history, title=f"{self.config.method}/{self.config.objective} on {self.task.name}")


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    task: TaskProtocol | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train an SVF expert (or the LoRA baseline) as ``config`` says and return a :class:`TrainResult`.

    See :mod:`transformer_squared.training` for what one step does and docs/training.md for the options.
    """
    trainer = Trainer(config, model=model, tokenizer=tokenizer, task=task)
    try:
        return report.warn_if_untrained(trainer.run(on_step=on_step))
    finally:
        trainer.close()


__all__ = ["MAX_BAD_STEPS", "TrainResult", "Trainer", "train"]
