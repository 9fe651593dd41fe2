"""Training experts with reinforcement learning (REINFORCE), and the supervised / LoRA baselines.

One RL step (``objective="rl"``):

1. take the next B prompts of the task's train split (a seeded permutation per epoch);
2. sample K completions per prompt with :func:`~transformer_squared.generation.generate`
   (batched, KV cache, z fixed so SVF uses its cached merged weights). Each prompt's K samples
   are drawn in their own call seeded by (seed, step, prompt index), so the samples do not depend
   on how prompts are split between processes or micro-batches;
3. reward each completion with ``task.rewards`` (a reward function that raises scores
   ``reward_wrong`` for that item, is logged, and training goes on);
4. advantage A = r (``baseline="none"``, the paper), r − mean of the prompt's K rewards
   (``"mean"``) or r − mean of the *other* K−1 rewards (``"loo"``);
5. loss = −Σ_i A_i Σ_t log π(y_it) / N + λ Σ_i Σ_t KL_it / N over the N = B·K completions, where
   log π comes from a teacher-forced forward of prompt + completion with gradients to the
   trainable weights, and KL_it is the k3 estimate exp(b−p) − (b−p) − 1 of KL(π‖π_base) at each
   sampled token (p, b: policy and base log-prob; ``kl_estimator="full"`` sums over the
   vocabulary instead). The base log-probs come from the same model with SVF switched off
   (``svf.disabled()``; LoRA: ``disable_adapter()``), without gradients. Only completion
   tokens (EOS included) count; prompt and padding positions are masked out;
6. AdamW step with gradient-norm clipping, cosine or constant LR, gradient accumulation over
   micro-batches; a NaN/Inf loss or gradient skips the step (three in a row stop the run).

``objective="sft"`` replaces sampling and rewards by the task's reference solutions (``Item.reference``)
and the loss by −Σ_t log π(reference_t) / B (the paper's LoRA baseline).

``objective="exact"`` (multiple-choice tasks) is the policy gradient with no sampling noise: the
policy is a softmax over the item's options, π_j ∝ exp(s_j / T), where s_j is option j's score in
the chosen answer channel (``cloze``: the option text's mean per-token log-likelihood after
``Question: ...\nAnswer:``; ``letter``: the option letter's log-probability as the first token
after the chat prompt). The loss is −E_π[r] = −Σ_j π_j r_j averaged over the B items (plus
λ·KL(π‖π_base) over the options, exact too), so its gradient is the exact gradient of the
expected reward. Validation then scores val items by log-likelihood in the same channel.

Every ``eval_every`` steps the policy is evaluated greedily on the task's ``val`` split (never
``test``) and the best one is saved to ``out`` (an expert folder for SVF, a PEFT adapter folder
for LoRA). ``out`` also receives ``metrics.jsonl``, ``train_curve.png``, ``train_config.json``
and ``checkpoint/`` (see :mod:`transformer_squared.checkpoint`), from which ``resume`` continues.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes its share of the B prompts, gradients
are all-reduced (summed; each process's loss is already divided by the global N), rank 0
evaluates and writes files. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CHECKPOINT_DIR, find_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from .errors import T2Error
from .fileio import append_jsonl, atomic_path, write_json, write_text
from .scoring import Batch, make_batch, token_logprobs  # noqa: F401 - re-exported (rl.make_batch, ...)

log = logging.getLogger(__name__)

METHODS = ("svf", "lora")
OBJECTIVES = ("rl", "sft", "exact")
CHANNELS = ("cloze", "letter")
NORMS = ("token", "char", "sum")
# --objective exact: items per micro-batch when --grad-accum is 0 (auto)
AUTO_MICRO_ITEMS = 16
BASELINES = ("none", "mean", "loo")
SCHEDULES = ("constant", "cosine")
KL_ESTIMATORS = ("k3", "full")
AUTOCAST = ("none", "bf16")
TRAIN_PATHS = ("merged", "factored")
# With --grad-accum 0 (auto), each micro-batch holds at most this many completions.
AUTO_MICRO_ROWS = 8
# Consecutive non-finite steps that stop a run.
MAX_BAD_STEPS = 3
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "train_curve.png"
CONFIG_NAME = "train_config.json"
REWARD_ERRORS_NAME = "reward_errors.jsonl"

# Options that change what a run computes: a resumed run must use the same values.
TRAJECTORY_FIELDS = (
    "method", "objective", "targets", "parameterization", "lora_rank", "lora_alpha", "lora_targets",
    "batch_size", "samples_per_prompt", "lr", "weight_decay", "kl_coef", "kl_estimator", "baseline",
    "temperature", "top_p", "max_new_tokens", "gen_prompts", "schedule", "warmup_steps", "clip",
    "seed", "dtype", "autocast", "reward_correct", "reward_wrong", "channel", "norm",
)


# =========================================================================================
# Configuration
# =========================================================================================
@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the ones documented in docs/training.md."""

    task: str = "gsm8k"
    out: str | os.PathLike = "experts/gsm8k"
    source: str = "offline"
    model: str = "default"
    dtype: str = "float32"
    device: str = "cpu"
    method: str = "svf"                  # svf | lora
    objective: str = "rl"                # rl | sft | exact
    channel: str | None = None           # multiple choice: cloze | letter (exact: default cloze; sft: the gold option)
    norm: str = "token"                  # exact: option score = mean log-prob per token | per char | sum
    # SVF
    targets: str | list[str] = "mlp"
    parameterization: str = "direct"
    train_path: str = "factored"         # forward used for the gradient: factored | merged
    # LoRA (the paper's baseline)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # the loop
    steps: int = 100
    batch_size: int = 16                 # prompts per step (global, over all processes)
    samples_per_prompt: int = 4          # K
    lr: float = 2e-3
    weight_decay: float = 0.0
    kl_coef: float = 0.1
    kl_estimator: str = "k3"             # k3 | full
    baseline: str = "none"               # none | mean | loo
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None    # None: the task's own
    grad_accum: int = 0                  # micro-batches per process and step; 0: auto
    gen_prompts: int = 1                 # prompts per generate call (their K samples share it)
    schedule: str = "constant"           # constant | cosine
    warmup_steps: int = 0
    clip: float = 1e-3                   # max gradient norm (0: no clipping)
    # model selection
    eval_every: int = 20                 # 0: no validation, the last weights are saved
    eval_at_start: bool = True           # evaluate the untrained model too (step 0)
    val_limit: int | None = 100          # first N val items (None: all)
    eval_batch_size: int = 16
    # files
    checkpoint_every: int = 10           # 0: only at the end
    resume: bool | str | os.PathLike | None = None
    overwrite: bool = False
    name: str | None = None              # expert name (default: the task name)
    seed: int = 0
    autocast: str = "none"               # none | bf16 (teacher-forced forwards only)
    share_prompt: bool = True            # encode each prompt once for its K samples (sampling and update)
    reward_correct: float = 1.0
    reward_wrong: float = -1.0
    progress: bool = True
    tensorboard: bool = False

    def validate(self) -> None:
        """Raise a T2Error naming the first bad option."""
        def choice(name: str, allowed: Sequence[str]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise T2Error(f"--{name.replace('_', '-')} {value!r} is not one of: {', '.join(allowed)}")

        choice("method", METHODS)
        choice("objective", OBJECTIVES)
        if self.channel is not None:
            choice("channel", CHANNELS)
        choice("norm", NORMS)
        choice("baseline", BASELINES)
        choice("schedule", SCHEDULES)
        choice("kl_estimator", KL_ESTIMATORS)
        choice("autocast", AUTOCAST)
        choice("train_path", TRAIN_PATHS)
        for name in ("steps", "batch_size", "samples_per_prompt", "gen_prompts", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise T2Error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("grad_accum", "eval_every", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise T2Error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "kl_coef", "clip", "temperature"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise T2Error(f"--{name.replace('_', '-')} must be a finite number ≥ 0, got {value}")
        if self.lr == 0:
            raise T2Error("--lr must be positive")
        if not 0 < self.top_p <= 1:
            raise T2Error(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise T2Error(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.val_limit is not None and self.val_limit < 1:
            raise T2Error(f"--val-limit must be at least 1 (or omitted for all), got {self.val_limit}")
        if self.channel is not None and self.objective == "rl":
            raise T2Error("--channel applies to --objective exact (the policy over the options) and --objective sft "
                          "(imitate the gold option in that channel); sampled RL answers in free text")
        if self.objective == "exact" and self.temperature <= 0:
            raise T2Error("--objective exact needs --temperature > 0 (the softmax temperature over the options)")
        if self.objective == "rl":
            k = self.samples_per_prompt
            if self.baseline != "none" and k < 2:
                raise T2Error(f"--baseline {self.baseline} compares the K samples of a prompt and needs "
                              "--samples-per-prompt 2 or more (or use --baseline none)")
            if self.temperature == 0 and k > 1:
                raise T2Error("with --temperature 0 (greedy) the K samples of a prompt are identical; "
                              "use --samples-per-prompt 1 or a temperature > 0")

    @property
    def mc_channel(self) -> str | None:
        """The answer channel of a multiple-choice objective (exact, or sft on the gold option), else None."""
        if self.objective == "exact":
            return self.channel or "cloze"
        return self.channel if self.objective == "sft" else None

    @property
    def rows_per_prompt(self) -> int:
        """Completions per prompt in the loss: K for RL, 1 (the reference) for SFT."""
        return self.samples_per_prompt if self.objective == "rl" else 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["resume"] = None if self.resume in (None, False) else str(self.resume)
        return json.loads(json.dumps(d, default=str))


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


# =========================================================================================
# The loss, on plain tensors (tested on hand-made numbers)
# =========================================================================================
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


def kl_full(logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Per-position exact KL(π‖π_base) = Σ_v π_v (log π_v − log b_v), masked."""
    t = temperature if temperature > 0 else 1.0
    lp = F.log_softmax(logits.float() / t, dim=-1)
    lb = F.log_softmax(base_logits.float() / t, dim=-1)
    return F.kl_div(lb, lp, log_target=True, reduction="none").sum(-1) * mask


def policy_loss(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, normalizer: float,
                kl: torch.Tensor | None = None, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
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


# =========================================================================================
# Policies: what is trained (SVF here, LoRA in lora.py)
# =========================================================================================
class SVFPolicy:
    """SVF z vectors on a causal LM, with the handles the trainer uses (see :class:`LoRAPolicy`)."""

    method = "svf"

    def __init__(self, model: nn.Module, targets: str | Sequence[str] = "mlp", parameterization: str = "direct",
                 train_path: str = "factored") -> None:
        from .svf import SVFModel

        self.svf = SVFModel(model, targets=targets, parameterization=parameterization, path="merged")
        self.model = model
        self.train_path = train_path
        self.fingerprint = self.svf.fingerprint

    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.svf.named_parameters())

    def parameters(self) -> list[nn.Parameter]:
        return self.svf.parameters()

    def num_trainable(self) -> int:
        return self.svf.num_trainable_parameters()

    def describe(self) -> str:
        return (f"SVF on {self.svf.target_spec} ({len(self.svf.layers)} matrices, "
                f"{self.svf.parameterization.kind} parameterization, {self.train_path} training forward)")

    def state(self) -> dict[str, torch.Tensor]:
        return self.svf.state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.svf.layers):
            raise T2Error("the saved z vectors do not match this model's SVF targets")
        with torch.no_grad():
            for name, layer in self.svf.layers.items():
                layer.z.copy_(state[name].to(layer.z.device, layer.z.dtype))

    def base(self) -> contextlib.AbstractContextManager:
        """The base model inside the block: same object, SVF layers switched off."""
        return self.svf.disabled()

    def sampling(self) -> contextlib.AbstractContextManager:
        """Generation / evaluation: the merged path with W' cached while z is fixed."""
        return self.svf.use_path("merged")

    def training(self) -> contextlib.AbstractContextManager:
        return self.svf.use_path(self.train_path)

    def forward_module(self) -> nn.Module:
        return self.model

    def save(self, out: str | Path, state: dict[str, torch.Tensor], name: str, meta: dict[str, Any]) -> Path:
        """Write ``state`` as an expert folder whose metadata carries the training summary."""
        from .experts import Expert

        extra = {"domain": meta["domain"]} if meta.get("domain") else {}
        template = self.svf.to_expert(name, task=meta.get("task"), training=meta, **extra)
        if set(state) == set(template.z):  # layer order (a checkpoint reads back in sorted order)
            state = {n: state[n] for n in template.z}
        return Expert(state, template.meta).save(out)


# =========================================================================================
# torch.distributed
# =========================================================================================
@dataclass
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def setup_distributed(device: str) -> tuple[DistInfo, str]:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA)."""
    import datetime

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False), device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    if not dist.is_available():
        raise T2Error("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if str(device).startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    # Rank 0 evaluates while the others wait at a barrier: allow long evaluations.
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=3))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, True), device


# =========================================================================================
# The trainer
# =========================================================================================
@dataclass
class Rollout:
    """One process's share of a step: prompts, completions (prompt-major, K per prompt), rewards."""

    step: int
    items: list
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    rewards: torch.Tensor | None          # (P, K); None for SFT
    k: int
    finished: list[bool]
    reward_errors: list[dict[str, Any]] = field(default_factory=list)
    gen_seconds: float = 0.0
    reward_seconds: float = 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def sample_seed(seed: int, step: int, index: int) -> int:
    """The generation seed of one prompt group: a hash of (run seed, step, global prompt index)."""
    digest = hashlib.sha256(f"t2-rl/{seed}/{step}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def safe_rewards(task, items: Sequence, completions: Sequence[str],
                 seconds: float | None = None) -> tuple[list[float], list[dict[str, Any]]]:
    """``task.rewards`` for a batch; an item whose check raises gets ``task.reward_wrong`` and an error record.

    Any exception from the task's checker is caught on purpose: a broken checker must not kill
    hours of training, but every failure is reported (metrics and reward_errors.jsonl). A task that
    keeps the standard ±reward of its checker is checked under a per-sample time budget
    (:func:`~transformer_squared.rewards_guard.bounded_correct_many`): a check that overruns gets
    ``reward_wrong`` and is reported the same way.
    """
    from .tasks.base import Task

    if isinstance(task, Task) and type(task).rewards is Task.rewards:
        from .rewards_guard import DEFAULT_SECONDS, bounded_correct_many

        problems: list[dict[str, Any]] = []

        def record(index: int, reason: str) -> None:
            problems.append({"index": index, "id": str(getattr(items[index], "id", index)), "error": reason[:500]})

        oks = bounded_correct_many(task, list(items), list(completions), seconds or DEFAULT_SECONDS,
                                   on_problem=record)
        return [task.reward_correct if ok else task.reward_wrong for ok in oks], problems
    try:
        out = [float(r) for r in task.rewards(list(items), list(completions))]
        if len(out) == len(items):
            return out, []
    except Exception:  # noqa: BLE001 - retried item by item below
        pass
    rewards: list[float] = []
    errors: list[dict[str, Any]] = []
    for i, (item, text) in enumerate(zip(items, completions, strict=True)):
        try:
            rewards.append(float(task.rewards([item], [text])[0]))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            rewards.append(float(task.reward_wrong))
            errors.append({"index": i, "id": str(getattr(item, "id", i)),
                           "error": f"{type(exc).__name__}: {exc}"[:500]})
    return rewards, errors


def _mean_gold_logprob(rows: Sequence[dict[str, Any]], norm: str) -> float | None:
    """Mean log π(gold) of the softmax over normalised option scores, from loglik evaluation rows."""
    from .scoring import OptionScores

    vals = []
    for r in rows:
        sc = OptionScores(torch.tensor(r["logp"]), torch.tensor(r["n_tokens"]), torch.tensor(r["n_chars"]))
        vals.append(float(F.log_softmax(sc.normalised(norm), dim=0)[r["gold"]]))
    return sum(vals) / len(vals) if vals else None


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, cap))


class Trainer:
    """Holds the model, policy, optimiser and data order of one run; :meth:`run` trains.

    ``model``/``tokenizer``/``task`` may be given (tests, notebooks); otherwise they are loaded
    from ``config.model`` and ``config.task``. Lower-level pieces (:meth:`rollout`, :meth:`update`,
    :meth:`sequence_logprobs`) are public for tests and benchmarks.
    """

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, tokenizer=None, task=None) -> None:
        config.validate()
        self.config = c = config
        self.dist, self.device_name = setup_distributed(c.device)
        try:
            self._setup(model, tokenizer, task)
        except BaseException:
            self.dist.close()
            raise

    # -- setup ----------------------------------------------------------------------------
    def _setup(self, model, tokenizer, task) -> None:
        c, d = self.config, self.dist
        if c.batch_size % d.world:
            raise T2Error(f"--batch-size {c.batch_size} is not divisible by the {d.world} processes; "
                          f"use a multiple of {d.world}")
        self.local_prompts = c.batch_size // d.world
        if self.local_prompts % c.gen_prompts:
            raise T2Error(f"--gen-prompts {c.gen_prompts} must divide the {self.local_prompts} prompts "
                          "each process handles per step")
        rows = c.rows_per_prompt
        if c.grad_accum:
            if self.local_prompts % c.grad_accum:
                raise T2Error(f"--grad-accum {c.grad_accum} must divide the {self.local_prompts} prompts each "
                              "process handles per step (batch size / processes)")
            self.micro_prompts = self.local_prompts // c.grad_accum
        elif c.mc_channel:
            self.micro_prompts = _largest_divisor_at_most(self.local_prompts, AUTO_MICRO_ITEMS)
        else:
            self.micro_prompts = _largest_divisor_at_most(self.local_prompts, AUTO_MICRO_ROWS // rows)

        self.out = Path(c.out)
        resume_from = self._check_out()

        # the task and its data
        if task is None:
            from .tasks import get_task

            task = get_task(c.task, source=c.source, reward_correct=c.reward_correct, reward_wrong=c.reward_wrong)
        self.task = task
        splits = task.splits() if hasattr(task, "splits") else ["train", "val"]
        if "train" not in splits:
            raise T2Error(f"task {task.name!r} has no train split (it has: {', '.join(splits)}); it is for "
                          "evaluation only. Train on gsm8k, mbpp or arc_easy, or give --source a JSONL file "
                          "with train records")
        self.train_items = list(task.load("train"))
        if c.mc_channel:
            from .tasks.multiple_choice import is_multiple_choice

            if not is_multiple_choice(task):
                raise T2Error(f"--objective {c.objective} with an answer channel needs a multiple-choice task (a finite "
                              f"answer set); {task.name!r} has open answers: use --objective rl or sft without --channel")
        if c.objective == "sft" and not c.mc_channel:
            self.train_items = [it for it in self.train_items if getattr(it, "reference", None)]
            if not self.train_items:
                raise T2Error(f"task {task.name!r} has no reference solutions in its train split, so "
                              "--objective sft has nothing to imitate; use --objective rl")
        if not self.train_items:
            raise T2Error(f"the train split of task {task.name!r} is empty")
        self.val_items: list = []
        if c.eval_every:
            if "val" not in splits:
                raise T2Error(f"task {task.name!r} has no val split to choose the best weights on; "
                              "pass --eval-every 0 to keep the last weights instead")
            self.val_items = list(task.load("val"))[: c.val_limit]
            if 0 < len(self.val_items) < 500 and c.val_limit is not None:
                se = 100 * math.sqrt(0.25 / len(self.val_items))
                log.warning("choosing the best weights on %d val items (standard error up to %.1f points); "
                            "--val-limit 0 uses all of them", len(self.val_items), se)
        self.max_new_tokens = c.max_new_tokens or int(getattr(task, "max_new_tokens", 256))

        # the model and what is trained
        from .models import load_model, prepare_tokenizer

        if model is None:
            model, tokenizer = load_model(c.model, dtype=c.dtype, device=self.device_name, progress=c.progress)
        elif tokenizer is None:
            raise T2Error("pass the tokenizer together with the model")
        prepare_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        model.eval()
        self.model_name = (getattr(model, "t2_model_name", None)
                           or getattr(getattr(model, "config", None), "_name_or_path", "") or c.model)
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        if c.method == "svf":
            self.policy: Any = SVFPolicy(model, targets=c.targets, parameterization=c.parameterization,
                                         train_path=c.train_path)
        else:
            from .lora import LoRAPolicy

            self.policy = LoRAPolicy(model, rank=c.lora_rank, alpha=c.lora_alpha, targets=c.lora_targets,
                                     seed=c.seed)
        self.params = self.policy.parameters()
        self.device = self.params[0].device
        fwd = self.policy.forward_module().forward
        self._keep_kw = "logits_to_keep" in inspect.signature(fwd).parameters
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id

        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

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
        self._start_state = {n: t.clone() for n, t in self.policy.state().items()}
        self._prev_grad: torch.Tensor | None = None
        self._prepare_out(resume_from)

    def _lr_factor(self, step: int) -> float:
        """LR multiplier for the optimiser step with index ``step`` (0-based): warmup, then the schedule."""
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        span = max(1, c.steps - c.warmup_steps)
        progress = min(1.0, (step - c.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    @property
    def trainable_params(self) -> int:
        return self.policy.num_trainable()

    # -- output folder, resume ------------------------------------------------------------
    def _owned_files(self) -> list[Path]:
        return [self.out / n for n in (METRICS_NAME, CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old", PLOT_NAME,
                                       REWARD_ERRORS_NAME, CONFIG_NAME)]

    def _check_out(self) -> Path | None:
        """Before anything is loaded: the checkpoint to resume from, or check that ``out`` is free."""
        c = self.config
        if c.resume not in (None, False):
            where = self.out if c.resume is True or str(c.resume) == "auto" else Path(c.resume)
            found = find_checkpoint(where)
            if found is None:
                raise T2Error(f"no checkpoint in {str(where)!r} (a run writes its first one after "
                              "--checkpoint-every steps); start a new run without --resume (--overwrite if "
                              "the folder holds an earlier run)")
            return found
        names = (METRICS_NAME, CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old", "expert.json", "adapter_config.json")
        existing = [self.out / n for n in names if (self.out / n).exists()]
        if existing and not c.overwrite:
            raise T2Error(f"{str(self.out)!r} already holds a training run or an expert ({existing[0].name}); pass "
                          "--resume to continue the run, --overwrite to replace it, or another --out")
        return None

    def _prepare_out(self, resume_from: Path | None) -> None:
        d = self.dist
        if resume_from is not None:
            ckpt = load_checkpoint(resume_from)
            self._check_resume(ckpt)
            self._restore(ckpt)
            return
        existing = [p for p in self._owned_files() if p.exists()]
        d.barrier()
        if existing and d.main:
            for p in self._owned_files():
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        d.barrier()

    def _identity(self) -> dict[str, Any]:
        src = getattr(self.task, "source", None)
        return {"method": self.config.method, "objective": self.config.objective, "model": self.model_name,
                "fingerprint": self.policy.fingerprint, "task": self.task.name,
                "source": getattr(src, "label", str(src) if src is not None else None)}

    def _check_resume(self, ckpt) -> None:
        s, mine = ckpt.state, self._identity()
        where = str(ckpt.folder)
        if s.get("method") != mine["method"]:
            raise T2Error(f"checkpoint {where!r} trains {s.get('method')!r}, not {mine['method']!r}; "
                          f"resume with --method {s.get('method')} or use another --out")
        if s.get("fingerprint") != mine["fingerprint"]:
            raise T2Error(f"checkpoint {where!r} was made with model {s.get('model')!r}, not {mine['model']!r} "
                          "(the weights differ); resume with the same --model/--targets or use another --out")
        if s.get("task") != mine["task"] or s.get("source") != mine["source"]:
            raise T2Error(f"checkpoint {where!r} trains task {s.get('task')!r} (source {s.get('source')!r}), not "
                          f"{mine['task']!r} (source {mine['source']!r}); use the same --task or another --out")
        saved, now = s.get("config", {}), self.config.to_dict()
        # an option added after the checkpoint was written had its default value then
        defaults = TrainConfig().to_dict()
        diffs = [k for k in TRAJECTORY_FIELDS if saved.get(k, defaults.get(k)) != now.get(k)]
        if diffs:
            shown = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} (now {now.get(k)!r})" for k in diffs[:3])
            raise T2Error(f"checkpoint {where!r} was made with other options: {shown}; resume with the same options")

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
        path = self.out / METRICS_NAME
        rows = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the kill
                if isinstance(row, dict) and row.get("step", 1 << 60) <= self.step:
                    rows.append(row)
        self.history = rows
        self.dist.barrier()
        if self.dist.main:
            # Forget what the killed run logged after its last checkpoint; re-save the best weights
            # in case that run had overwritten them with a later, now undone, step.
            write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
            if self.best_state is not None:
                self.policy.save(self.out, self.best_state, self._name(), self._summary())
        self.dist.barrier()

    def _save_checkpoint(self) -> None:
        state = {**self._identity(), "step": self.step, "position": self.step * self.config.batch_size,
                 "best_val": self.best_val, "best_loglik": self.best_loglik, "best_step": self.best_step, "bad_streak": self.bad_streak,
                 "skipped": self.skipped, "world_size": self.dist.world, "config": self.config.to_dict()}
        save_checkpoint(self.out / CHECKPOINT_DIR, state=state, trainable=self.policy.state(),
                        best=self.best_state, optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict())

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
        from .generation import generate, sample_group

        c, tok = self.config, self.tokenizer
        base = (step - 1) * c.batch_size
        indices = list(self._local_indices())
        items = [self.item_at(base + g) for g in indices]
        if c.mc_channel:  # nothing to sample: the loss sums over every option
            return Rollout(step, items, [], [], [], None, 1, [True] * len(items))
        prompts = [self.task.prompt(it, tok) for it in items]
        prompt_ids = [list(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        if c.objective == "sft":
            completions = []
            for it in items:
                ids = list(tok(it.reference, add_special_tokens=False)["input_ids"])[: self.max_new_tokens - 1]
                completions.append(ids + [self.eos_id])
            return Rollout(step, items, prompt_ids, completions, [it.reference for it in items], None, 1,
                           [True] * len(items))
        k = c.samples_per_prompt
        t0 = time.perf_counter()
        gens = []
        with torch.no_grad(), self.policy.sampling():
            for g0 in range(0, len(items), c.gen_prompts):
                group = prompts[g0:g0 + c.gen_prompts]
                seed = sample_seed(c.seed, step, indices[g0])
                if c.share_prompt and len(group) == 1:  # the same samples, the prompt prefilled once
                    gens += sample_group(self.policy.model, tok, group[0], k, max_new_tokens=self.max_new_tokens,
                                         temperature=c.temperature, top_p=c.top_p, seed=seed)
                    continue
                gens += generate(self.policy.model, tok, [p for p in group for _ in range(k)],
                                 max_new_tokens=self.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                                 batch_size=len(group) * k, seed=seed)
        t1 = time.perf_counter()
        texts = [g.text for g in gens]
        rewards, errors = safe_rewards(self.task, [it for it in items for _ in range(k)], texts)
        for e in errors:
            e["step"] = step
        t2 = time.perf_counter()
        return Rollout(step, items, prompt_ids, [list(g.token_ids) for g in gens], texts,
                       torch.tensor(rewards, dtype=torch.float32).view(len(items), k), k,
                       [g.finished for g in gens], errors, t1 - t0, t2 - t1)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _logits(self, batch: Batch) -> torch.Tensor:
        """Logits at the positions that predict the completion tokens: (n, C, V)."""
        c_len = batch.completion_len
        kwargs: dict[str, Any] = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=batch.position_ids, use_cache=False)
        if self._keep_kw:
            kwargs["logits_to_keep"] = c_len + 1
        logits = self.policy.model(**kwargs).logits
        return logits[:, -(c_len + 1):-1]

    def _shared(self, ro: Rollout) -> bool:
        """Whether the update encodes each prompt once for its completions (k3 or no KL needs no full logits)."""
        c = self.config
        return c.share_prompt and ro.k > 1 and not (c.kl_coef > 0 and c.kl_estimator == "full") \
            and all(ro.completion_ids)

    def _shared_logprobs(self, ro: Rollout, p0: int, p1: int, temp: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (n, C) and mask of prompts p0..p1's completions, each prompt encoded once."""
        from .scoring import continuation_token_logprobs

        k = ro.k
        groups = [(ro.prompt_ids[p], ro.completion_ids[p * k:(p + 1) * k]) for p in range(p0, p1)]
        return continuation_token_logprobs(self.policy.model, groups, self.pad_id, temperature=temp)

    def _rows(self, ro: Rollout, p0: int, p1: int) -> tuple[list[list[int]], list[list[int]]]:
        k = ro.k
        prompts = [ro.prompt_ids[p] for p in range(p0, p1) for _ in range(k)]
        return prompts, ro.completion_ids[p0 * k:p1 * k]

    def sequence_logprobs(self, ro: Rollout, base: bool = False) -> torch.Tensor:
        """Σ_t log π(y_t) of each completion of a rollout (no gradient), in rollout order."""
        out = []
        temp = self.config.temperature if self.config.objective == "rl" else 1.0
        ctx = self.policy.base() if base else self.policy.training()
        with torch.no_grad(), ctx, self._autocast():
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

    def accumulate_gradients(self, ro: Rollout) -> dict[str, float]:
        """Forward and backward over the micro-batches of a rollout; gradients are left in ``.grad``.

        Returns this process's sums of loss, pg_loss, kl and completion log-prob.
        """
        c = self.config
        if c.mc_channel:
            return self._exact_gradients(ro)
        rl = c.objective == "rl"
        k = ro.k
        n_global = c.batch_size * k
        if rl:
            adv = compute_advantages(ro.rewards, c.baseline).reshape(-1)
        else:
            adv = torch.ones(len(ro.items))
        temp = c.temperature if rl else 1.0
        want_kl = rl and (c.kl_coef > 0)
        totals = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "logp": 0.0}
        for p0 in range(0, len(ro.items), self.micro_prompts):
            p1 = min(len(ro.items), p0 + self.micro_prompts)
            a = adv[p0 * k:p1 * k].to(self.device)
            if self._shared(ro):
                with self._autocast():
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
            with self._autocast():
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
                    kl = (kl_k3(logp, base_lp, batch.mask) if base_lp is not None
                          else kl_full(logits, base_logits, batch.mask, temp))
                loss, stats = policy_loss(logp, batch.mask, a, n_global, kl, c.kl_coef)
            loss.backward()
            del logits, logp, kl, loss, base_logits
            for key in totals:
                totals[key] += stats.get(key, 0.0)
        return totals

    def _exact_gradients(self, ro: Rollout) -> dict[str, float]:
        """The exact policy gradient over each item's options (see the module docstring).

        Returns this process's sums of loss, pg_loss (−E[r]), kl, log π(gold), E[r], E[r²], items whose
        most likely option is gold, and the policy's entropy.
        """
        from .scoring import score_options

        c = self.config
        channel = c.mc_channel
        sft = c.objective == "sft"  # maximise the gold option's (normalised) log-likelihood instead of E[r]
        want_kl = c.kl_coef > 0 and not sft
        totals = dict.fromkeys(("loss", "pg_loss", "kl", "logp", "reward", "reward_sq", "argmax_correct",
                                "entropy"), 0.0)
        for p0 in range(0, len(ro.items), self.micro_prompts):
            items = ro.items[p0:p0 + self.micro_prompts]
            requests = [self.task.requests(it, channel, self.tokenizer) for it in items]
            with self._autocast():
                base = None
                if want_kl:
                    with torch.no_grad(), self.policy.base():
                        base = score_options(self.policy.model, self.tokenizer, requests, batch_size=len(items))
                with self.policy.training():
                    scores = score_options(self.policy.model, self.tokenizer, requests, batch_size=len(items))
            loss = torch.zeros((), device=self.device)
            for i, (item, sc) in enumerate(zip(items, scores, strict=True)):
                gold = self.task.gold_index(item)
                logpi = F.log_softmax(sc.normalised(c.norm).float() / c.temperature, dim=0)
                pi = logpi.exp()
                r = torch.full_like(pi, self.task.reward_wrong)
                r[gold] = self.task.reward_correct
                expected = (pi * r).sum()
                item_loss = -sc.normalised(c.norm)[gold].float() if sft else -expected
                totals["pg_loss"] += item_loss.item() / c.batch_size  # the objective's own term, without the KL
                if base is not None:
                    logb = F.log_softmax(base[i].normalised(c.norm).float() / c.temperature, dim=0)
                    kl = (pi * (logpi - logb.to(logpi.device))).sum()
                    item_loss = item_loss + c.kl_coef * kl
                    totals["kl"] += kl.item() / c.batch_size
                loss = loss + item_loss / c.batch_size
                totals["reward"] += expected.item()
                totals["reward_sq"] += (pi * r * r).sum().item()
                totals["argmax_correct"] += float(int(torch.argmax(logpi).item()) == gold)
                totals["entropy"] += -(pi * logpi).sum().item()
                totals["logp"] += logpi[gold].item()
            loss.backward()
            totals["loss"] += loss.item()
        return totals

    def _rms_change(self) -> float:
        """rms of (trainable − its value at the start of the run): rms(z − 1) for a direct SVF expert."""
        sq, n = 0.0, 0
        for name, value in self.policy.state().items():
            start = self._start_state.get(name)
            if start is not None:
                sq += float(((value - start) ** 2).sum())
                n += value.numel()
        return math.sqrt(sq / n) if n else 0.0

    def _grad_cosine(self) -> float | None:
        """Cosine between this step's (clipped) gradient and the previous step's: ~0 on pure noise."""
        grads = [p.grad.reshape(-1).float() for p in self.params if p.grad is not None]
        if not grads:
            return None
        flat = torch.cat(grads).detach().cpu()
        prev, self._prev_grad = self._prev_grad, flat
        if prev is None or prev.shape != flat.shape:
            return None
        denom = float(flat.norm() * prev.norm())
        return float(flat @ prev) / denom if denom > 0 else None

    def update(self, ro: Rollout) -> dict[str, Any]:
        """Loss, backward over micro-batches, all-reduce, clip and optimiser step (or skip if non-finite)."""
        c, d = self.config, self.dist
        rl = c.objective == "rl"
        exact = c.mc_channel is not None
        want_kl = (rl or c.objective == "exact") and (c.kl_coef > 0)
        k = ro.k
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals = self.accumulate_gradients(ro)
        t_backward = time.perf_counter() - t0

        # gradients: sum over processes (each loss is already divided by the global N)
        if d.enabled:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            flat = torch.cat([p.grad.reshape(-1) for p in self.params])
            d.all_reduce_sum(flat)
            offset = 0
            for p in self.params:
                n = p.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p))
                offset += n
        local = [totals["loss"], totals["pg_loss"], totals["kl"], totals["logp"],
                 float(ro.num_tokens), float(sum(ro.finished)), float(len(ro.reward_errors))]
        if rl:
            r = ro.rewards.reshape(-1).double()
            local += [r.sum().item(), (r * r).sum().item(), float((r == self.task.reward_correct).sum().item())]
            # prompts whose K samples got different rewards: the only ones that carry a gradient
            local += [0.0, float((ro.rewards.max(dim=1).values != ro.rewards.min(dim=1).values).sum().item())]
        elif exact:
            local += [totals["reward"], totals["reward_sq"], totals["argmax_correct"], totals["entropy"], 0.0]
        else:
            local += [0.0, 0.0, 0.0, 0.0, 0.0]
        agg = d.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=self.device)).tolist()
        loss_sum, pg_sum, kl_sum, logp_sum, tokens, finished, n_err, r_sum, r2_sum, n_ok, ent_sum, n_disagree = agg
        params = [p for p in self.params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, c.clip if c.clip > 0 else float("inf")).item()
        grad_cos = self._grad_cosine()
        lr = self.scheduler.get_last_lr()[0]
        finite = math.isfinite(loss_sum) and math.isfinite(norm)
        if finite:
            self.optimizer.step()
            self.bad_streak = 0
        else:
            self.bad_streak += 1
            self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", message="Detected call of", category=UserWarning)
            self.scheduler.step()
        n_rows = c.batch_size * k
        row: dict[str, Any] = {
            "loss": loss_sum if finite else None, "grad_norm": norm if math.isfinite(norm) else None, "lr": lr,
            "skipped": not finite, "tokens": int(tokens), "mean_len": tokens / n_rows,
            "update_seconds": round(time.perf_counter() - t0, 3), "backward_seconds": round(t_backward, 3),
        }
        row.update(rms_change=self._rms_change(), grad_cos_prev=grad_cos)
        if rl:
            mean = r_sum / n_rows
            var = r2_sum / n_rows - mean * mean
            row.update(reward_mean=mean, reward_std=math.sqrt(max(0.0, var)) if math.isfinite(var) else None,
                       correct_frac=n_ok / n_rows, pg_loss=pg_sum if finite else None,
                       kl=(kl_sum if want_kl else None), finished_frac=finished / n_rows,
                       reward_errors=int(n_err), disagree_frac=n_disagree / c.batch_size)
        elif exact:
            mean = r_sum / c.batch_size
            row.update(reward_mean=mean, correct_frac=n_ok / c.batch_size, entropy=ent_sum / c.batch_size,
                       pg_loss=pg_sum if finite else None, kl=(kl_sum if want_kl else None),
                       gold_logprob=logp_sum / c.batch_size)
        else:
            row.update(nll_per_token=(-logp_sum / tokens) if tokens else None)
        for key, value in list(row.items()):
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
        return row

    # -- validation and saving ------------------------------------------------------------
    def evaluate_val(self) -> tuple[float, int, float, float | None]:
        """Greedy accuracy on the val items (rank 0 only), and the mean per-token log-likelihood
        of their reference answers (one teacher-forced pass; the tie-breaker between equal
        accuracies, as in the CEM search): (accuracy, n, seconds, loglik or None)."""
        from .evaluation import evaluate, evaluate_loglik
        from .scoring import mean_reference_loglik

        t0 = time.perf_counter()
        c = self.config
        if c.mc_channel:  # choose in the channel that is trained: options scored, no generation
            with torch.no_grad(), self.policy.sampling():
                summary, rows = evaluate_loglik(self.policy.model, self.tokenizer, self.task, self.val_items,
                                                split="val", channel=c.mc_channel, norm=c.norm,
                                                batch_size=c.eval_batch_size, progress=False)
            return summary.accuracy, summary.n, time.perf_counter() - t0, _mean_gold_logprob(rows, c.norm)
        with torch.no_grad(), self.policy.sampling():
            summary, _ = evaluate(self.policy.model, self.tokenizer, self.task, self.val_items, split="val",
                                  batch_size=self.config.eval_batch_size, max_new_tokens=self.max_new_tokens,
                                  progress=False)
            loglik = mean_reference_loglik(self.policy.model, self.tokenizer, self.task, self.val_items,
                                           self.config.eval_batch_size)
        return summary.accuracy, summary.n, time.perf_counter() - t0, loglik

    def _name(self) -> str:
        return self.config.name or self.task.name

    def _summary(self) -> dict[str, Any]:
        c = self.config
        info: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            info = self.task.split_info("train")
        return {
            "task": self.task.name, "domain": getattr(self.task, "expert_domain", None) or getattr(self.task, "domain", None),
            "method": c.method, "objective": c.objective, "model": self.model_name,
            "best_step": self.best_step, "best_val_accuracy": self.best_val, "val_n": len(self.val_items),
            "steps": c.steps, "batch_size": c.batch_size, "samples_per_prompt": c.samples_per_prompt,
            "lr": c.lr, "kl_coef": c.kl_coef, "baseline": c.baseline, "temperature": c.temperature,
            "max_new_tokens": self.max_new_tokens, "seed": c.seed, "world_size": self.dist.world,
            "trainable_params": self.trainable_params, "train_provenance": info.get("provenance"),
        }

    def _consider_best(self, step: int, accuracy: float, loglik: float | None = None) -> bool:
        """Keep these weights if val accuracy is higher, or equal with a higher reference
        log-likelihood (with a handful of val items, ties at 0% or at a few % are common)."""
        better = self.best_val is None or accuracy > self.best_val or (
            accuracy == self.best_val and loglik is not None and self.best_loglik is not None
            and loglik > self.best_loglik)
        if not better:
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
        writer = self._tensorboard() if main and c.tensorboard else None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / CONFIG_NAME, {**self._identity(), "trainable_params": self.trainable_params,
                                                "policy": self.policy.describe(), "world_size": d.world,
                                                "train_items": len(self.train_items), "val_items": len(self.val_items),
                                                "config": c.to_dict()})
            self._say(f"t2 train: {c.method}/{c.objective} on {self.task.name} ({len(self.train_items)} train, "
                      f"{len(self.val_items)} val items), model {self.model_name}; {self.policy.describe()}; "
                      f"trainable parameters: {self.trainable_params:,}"
                      + (f"; resuming at step {self.step}" if self.step else ""))
        if self.step == 0 and c.eval_every and c.eval_at_start:
            row: dict[str, Any] = {"step": 0, "trainable_params": self.trainable_params}
            if main:
                acc, n, secs, ll = self.evaluate_val()
                self._consider_best(0, acc, ll)
                row.update(val_accuracy=acc, val_n=n, val_ref_loglik=ll, eval_seconds=round(secs, 3), best=True)
                self._log(row, writer)
            d.barrier()
        from tqdm.auto import tqdm

        bar = tqdm(total=c.steps, initial=self.step, disable=not (c.progress and main), desc=f"train {self.task.name}",
                   unit="step", dynamic_ncols=True)
        try:
            while self.step < c.steps:
                step = self.step + 1
                t0 = time.perf_counter()
                ro = self.rollout(step)
                row = {"step": step, **self.update(ro)}
                self.step = step
                secs = time.perf_counter() - t0
                row.update(gen_seconds=round(ro.gen_seconds, 3), reward_seconds=round(ro.reward_seconds, 3),
                           seconds=round(secs, 3), tokens_per_s=row["tokens"] / secs if secs > 0 else None,
                           elapsed=round(time.perf_counter() - t_run, 3), trainable_params=self.trainable_params)
                if ro.reward_errors and main:
                    append_jsonl(self.out / REWARD_ERRORS_NAME, ro.reward_errors)
                    log.warning("step %d: the reward function raised for %d completion(s), scored as wrong: %s",
                                step, len(ro.reward_errors), ro.reward_errors[0]["error"])
                if row["skipped"]:
                    log.warning("step %d: loss or gradient is NaN/Inf; step skipped (%d in a row)",
                                step, self.bad_streak)
                if c.eval_every and (step % c.eval_every == 0 or step == c.steps):
                    if main:
                        acc, n, esecs, ll = self.evaluate_val()
                        row.update(val_accuracy=acc, val_n=n, val_ref_loglik=ll, eval_seconds=round(esecs, 3),
                                   best=self._consider_best(step, acc, ll))
                    d.barrier()
                if main:
                    self._log(row, writer)
                    bar.update(1)
                    post = {}
                    if row.get("reward_mean") is not None:
                        post["reward"] = f"{row['reward_mean']:+.3f}"
                    if row.get("kl") is not None:
                        post["kl"] = f"{row['kl']:.3g}"
                    if row.get("nll_per_token") is not None:
                        post["nll"] = f"{row['nll_per_token']:.3f}"
                    if self.best_val is not None:
                        post["best_val"] = f"{self.best_val:.1%}"
                    bar.set_postfix(post)
                if (c.checkpoint_every and step % c.checkpoint_every == 0) or step == c.steps:
                    if main:
                        self._save_checkpoint()
                    d.barrier()
                if self.bad_streak >= MAX_BAD_STEPS:
                    raise T2Error(f"the loss or gradient was NaN/Inf for {MAX_BAD_STEPS} steps in a row (up to step "
                                  f"{step}); lower --lr, check the task's rewards, or use --dtype float32 "
                                  "(the last checkpoint is in the --out folder)")
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
        return TrainResult(out=self.out, method=c.method, objective=c.objective, steps=self.step,
                           best_step=self.best_step, best_val_accuracy=self.best_val,
                           trainable_params=self.trainable_params, seconds=time.perf_counter() - t_run,
                           history=list(self.history), state=self.policy.state(), skipped_steps=self.skipped)

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        self.dist.close()

    # -- reporting ------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.config.progress:
            from tqdm.auto import tqdm

            tqdm.write(text)
        else:
            log.info(text)

    def _log(self, row: dict[str, Any], writer) -> None:
        self.history.append(row)
        append_jsonl(self.out / METRICS_NAME, [row])
        if writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    writer.add_scalar(key, value, row["step"])
        if "val_accuracy" in row and row["step"] > 0:
            self._plot()

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("--tensorboard needs the tensorboard package (pip install tensorboard); logging to "
                        "metrics.jsonl only")
            return None
        return SummaryWriter(log_dir=str(self.out / "tensorboard"))

    def _plot(self) -> None:
        """train_curve.png: reward (or SFT loss) and val accuracy against the step."""
        try:
            write_plot(self.out / PLOT_NAME, self.history, title=f"{self.config.method}/{self.config.objective} "
                                                                  f"on {self.task.name}")
        except ImportError:
            log.warning("matplotlib is not installed; no %s", PLOT_NAME)


def write_plot(path: str | Path, history: Sequence[dict[str, Any]], title: str = "") -> None:
    """Draw reward (or SFT NLL) and val accuracy against the step to a PNG (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    train = [r for r in history if r.get("step", 0) > 0]
    key, label = ("reward_mean", "mean reward") if any(r.get("reward_mean") is not None for r in train) \
        else ("nll_per_token", "NLL per token")
    pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), color="tab:blue", lw=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(label, color="tab:blue")
    val = [(r["step"], r["val_accuracy"]) for r in history if r.get("val_accuracy") is not None]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val, strict=True), color="tab:orange", marker="o", lw=1.5, label="val accuracy")
        ax2.set_ylabel("val accuracy", color="tab:orange")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def warn_if_untrained(result: TrainResult) -> TrainResult:
    """Warn when the saved weights are the step-0 ones (the identity: the run saved the base model)."""
    if result.best_step == 0 and os.environ.get("RANK", "0") == "0":
        acc = "" if result.best_val_accuracy is None else f" ({result.best_val_accuracy:.1%})"
        log.warning("the weights saved in %s are the untrained step-0 ones (the base model): no later step beat "
                    "step 0 on val%s, so nothing learned was kept; train longer, change --lr, or check the task's "
                    "rewards", result.out, acc)
    return result


def train(config: TrainConfig, *, model: nn.Module | None = None, tokenizer=None, task=None,
          on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train an SVF expert (or the LoRA baseline) as ``config`` says and return a :class:`TrainResult`.

    See the module docstring for what one step does and docs/training.md for the options.
    """
    trainer = Trainer(config, model=model, tokenizer=tokenizer, task=task)
    try:
        return warn_if_untrained(trainer.run(on_step=on_step))
    finally:
        trainer.close()


__all__ = ["Batch", "DistInfo", "Rollout", "SVFPolicy", "TrainConfig", "TrainResult", "Trainer", "compute_advantages",
           "kl_full", "kl_k3", "make_batch", "policy_loss", "safe_rewards", "sample_seed", "token_logprobs", "train",
           "write_plot"]
