"""What a training run is told: :class:`TrainConfig`, its choices and its checks.

Each option is declared once, here: its type (a ``Literal`` lists the choices), its default and,
in ``metadata["help"]``, the line ``t2 train --help`` shows for it (for a boolean whose default is
True that is the help of its ``--no-...`` flag). The command line is built from these fields
(:mod:`transformer_squared.cli.config_args`); docs/training.md explains the defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import T2Error

Method = Literal["svf", "lora"]
Objective = Literal["rl", "sft", "exact"]
Channel = Literal["cloze", "letter"]
Norm = Literal["token", "char", "sum"]
Baseline = Literal["none", "mean", "loo"]
Schedule = Literal["constant", "cosine"]
KLEstimator = Literal["k3", "full"]
Autocast = Literal["none", "bf16"]
TrainPath = Literal["merged", "factored"]

METHODS: tuple[str, ...] = typing.get_args(Method)
OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)
CHANNELS: tuple[str, ...] = typing.get_args(Channel)
NORMS: tuple[str, ...] = typing.get_args(Norm)
BASELINES: tuple[str, ...] = typing.get_args(Baseline)
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
KL_ESTIMATORS: tuple[str, ...] = typing.get_args(KLEstimator)
AUTOCAST: tuple[str, ...] = typing.get_args(Autocast)
TRAIN_PATHS: tuple[str, ...] = typing.get_args(TrainPath)

# With --grad-accum 0 (auto), a micro-batch holds at most AUTO_MICRO_ROWS completions. When the
# update encodes each prompt once (RL with K > 1, --share-prompt, no full KL), it holds up to
# AUTO_MICRO_SHARED_ROWS completions and AUTO_MICRO_TOKENS completion tokens (completions x
# max_new_tokens) instead: 8 completions of 256 tokens, or 32 short answers, whose one large
# micro-batch is about 1.4x faster on a CPU than four of 8. Where every row carries its own
# prompt (SFT, --no-share-prompt, full KL) the prompt tokens dominate, so the cap stays at 8.
AUTO_MICRO_ROWS = 8
AUTO_MICRO_SHARED_ROWS = 32
AUTO_MICRO_TOKENS = 2048
# --objective exact: items per micro-batch when --grad-accum is 0 (auto)
AUTO_MICRO_ITEMS = 16

# Options that change what a run computes: a resumed run must use the same values.
TRAJECTORY_FIELDS = (
    "method",
    "objective",
    "targets",
    "parameterization",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "batch_size",
    "samples_per_prompt",
    "lr",
    "weight_decay",
    "kl_coef",
    "kl_estimator",
    "baseline",
    "temperature",
    "top_p",
    "max_new_tokens",
    "gen_prompts",
    "schedule",
    "warmup_steps",
    "clip",
    "seed",
    "dtype",
    "autocast",
    "sample_autocast",
    "reward_correct",
    "reward_wrong",
    "channel",
    "norm",
)


def option(default: Any, help: str | None = None, **metadata: Any) -> Any:
    """A dataclass field whose ``metadata`` carries its command-line ``help`` (and ``flags``: more
    option strings, e.g. ``("-k",)``); a list default is copied for each instance."""
    if help is not None:
        metadata["help"] = help
    if isinstance(default, list):
        value = list(default)
        return field(default_factory=lambda: list(value), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the ones documented in docs/training.md."""

    task: str = option("gsm8k", help="gsm8k, mbpp, arc_easy, classify (tasks with a train split); or --data")
    out: str | os.PathLike = option("experts/gsm8k", help="output folder (the expert, metrics, plot, checkpoint)")
    source: str = option("offline", help="offline (bundled data), hub, or a JSONL file")
    # the model: its command-line options are shared with other commands (cli/common.py add_model_args)
    model: str = "default"
    dtype: str = "float32"
    device: str = "cpu"
    # what is trained
    method: Method = option("svf", help="svf (default) or the LoRA baseline")
    objective: Objective = option(
        "rl",
        help="rl: REINFORCE on the task's reward (default); sft: imitate the reference solutions; "
        "exact: exact policy gradient over a multiple-choice task's options (no sampling)",
    )
    channel: Channel | None = option(
        None,
        help="multiple choice: score options as text after 'Question: ...\\nAnswer:' (cloze; the default "
        "of exact) or as the first letter after the chat prompt (letter, what generation samples); "
        "with sft: imitate the gold option in that channel",
    )
    norm: Norm = option(
        "token", help="exact: option score = log-likelihood per token (default), per character, or summed"
    )
    # SVF
    targets: str | list[str] = "mlp"  # mlp | attn | all-linear | module-name regexes
    parameterization: str = "direct"  # direct | sigmoid (or a dict / svf.Parameterization)
    train_path: TrainPath = option(
        "factored",
        help="SVF forward used for the gradient (same result; factored was as fast or faster here, see docs)",
    )
    # LoRA (the paper's baseline)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: list[str] = option(["q_proj", "v_proj"], help="comma-separated module names")
    # the loop
    steps: int = 100
    batch_size: int = option(16, help="prompts per step, over all processes")
    samples_per_prompt: int = option(4, help="K completions sampled per prompt (RL)", flags=("-k",))
    lr: float = 2e-3
    weight_decay: float = 0.0
    kl_coef: float = option(0.1, help="λ of the KL(π‖π_base) penalty (0: off)")
    kl_estimator: KLEstimator = option("k3", help="k3: per sampled token (default); full: exact over the vocabulary")
    baseline: Baseline = option(
        "none", help="none: A = r (the paper); mean: r − prompt mean; loo: r − mean of the other samples"
    )
    temperature: float = option(1.0, help="sampling temperature (0: greedy)")
    top_p: float = 1.0
    max_new_tokens: int | None = option(None, help="default: the task's own")
    grad_accum: int = option(
        0,
        help=f"micro-batches per process and step (0: auto, ≤ {AUTO_MICRO_ROWS} completions each, or with "
        f"prompts shared ≤ {AUTO_MICRO_SHARED_ROWS} completions and ≤ {AUTO_MICRO_TOKENS} completion tokens)",
    )
    gen_prompts: int = option(
        1, help="prompts per generate call (default 1: samples independent of batching and processes)"
    )
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    clip: float = option(1e-3, help="max gradient norm (0: off; the paper: 1e-3)")
    # model selection
    eval_every: int = option(20, help="evaluate on val every N steps and keep the best (0: keep the last weights)")
    # True: evaluate the untrained model too (step 0)
    eval_at_start: bool = option(True, help="skip the step-0 evaluation of the base model")
    val_limit: int | None = option(100, help="first N val items (0: all)")  # None here: all
    eval_batch_size: int = 16
    # files
    checkpoint_every: int = option(10, help="0: only at the end")
    # True or "auto": the checkpoint in ``out``; a path: the checkpoint there
    resume: bool | str | os.PathLike | None = option(None, help="continue from the checkpoint in --out (or in DIR)")
    overwrite: bool = option(False, help="start again in an --out that holds a run")
    name: str | None = option(None, help="expert name (default: the task name)")
    seed: int = 0
    autocast: Autocast = option("none", help="bf16 autocast for the teacher-forced forwards (see docs/training.md)")
    # sampling stays in float32 unless asked: bf16 draws from a (slightly) different distribution
    sample_autocast: Autocast = option(
        "none", help="bf16: sample the RL rollouts under bf16 autocast too (about 1.7x faster sampling on CPU)"
    )
    # True: encode each prompt once for its K samples (sampling and update)
    share_prompt: bool = option(
        True, help="re-encode the prompt for each of its K samples (the slower layout; same gradients)"
    )
    reward_correct: float = 1.0
    reward_wrong: float = -1.0
    progress: bool = True
    tensorboard: bool = option(False, help="also log to <out>/tensorboard (needs tensorboard)")

    def validate(self) -> None:
        """Raise a T2Error naming the first bad option."""
        for name, allowed in _choices().items():
            value = getattr(self, name)
            if value is None and _optional(name):
                continue
            if value not in allowed:
                raise T2Error(f"--{name.replace('_', '-')} {value!r} is not one of: {', '.join(allowed)}")
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
            raise T2Error(
                "--channel applies to --objective exact (the policy over the options) and --objective sft "
                "(imitate the gold option in that channel); sampled RL answers in free text"
            )
        if self.objective == "exact" and self.temperature <= 0:
            raise T2Error("--objective exact needs --temperature > 0 (the softmax temperature over the options)")
        if self.objective == "rl":
            k = self.samples_per_prompt
            if self.baseline != "none" and k < 2:
                raise T2Error(
                    f"--baseline {self.baseline} compares the K samples of a prompt and needs "
                    "--samples-per-prompt 2 or more (or use --baseline none)"
                )
            if self.temperature == 0 and k > 1:
                raise T2Error(
                    "with --temperature 0 (greedy) the K samples of a prompt are identical; "
                    "use --samples-per-prompt 1 or a temperature > 0"
                )

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

    @property
    def resume_dir(self) -> Path | None:
        """Where ``resume`` points: ``out`` for True/"auto", the path given, or None (a new run)."""
        resume = self.resume
        if resume is None or resume is False:
            return None
        return Path(self.out) if resume is True or str(resume) == "auto" else Path(resume)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["resume"] = None if self.resume in (None, False) else str(self.resume)
        return json.loads(json.dumps(d, default=str))


@functools.cache
def _choices() -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for every field whose type is a ``Literal`` (or an optional one)."""
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        literal = literal_values(hint)
        if literal is not None:
            out[name] = literal
    return out


@functools.cache
def _optional(name: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[name])


def literal_values(hint: Any) -> tuple[str, ...] | None:
    """The values of a ``Literal[...]`` type, also inside ``Literal[...] | None``; None for other types."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, cap))


def auto_micro_prompts(c: TrainConfig, local_prompts: int, max_new_tokens: int) -> int:
    """Prompts (or items) per micro-batch: ``--grad-accum`` if given, else sized by the update's layout.

    Shared-prompt RL updates take up to AUTO_MICRO_SHARED_ROWS completions and AUTO_MICRO_TOKENS
    completion tokens per backward; per-row layouts (SFT, ``--no-share-prompt``, the full KL)
    AUTO_MICRO_ROWS rows; the options objective AUTO_MICRO_ITEMS items.
    """
    if c.grad_accum:
        return local_prompts // c.grad_accum
    if c.mc_channel:
        return _largest_divisor_at_most(local_prompts, AUTO_MICRO_ITEMS)
    shared = (
        c.objective == "rl"
        and c.share_prompt
        and c.samples_per_prompt > 1
        and not (c.kl_coef > 0 and c.kl_estimator == "full")
    )
    rows = min(AUTO_MICRO_SHARED_ROWS, AUTO_MICRO_TOKENS // max_new_tokens) if shared else AUTO_MICRO_ROWS
    return _largest_divisor_at_most(local_prompts, rows // c.rows_per_prompt)


__all__ = [
    "AUTOCAST",
    "AUTO_MICRO_ITEMS",
    "AUTO_MICRO_ROWS",
    "AUTO_MICRO_SHARED_ROWS",
    "AUTO_MICRO_TOKENS",
    "auto_micro_prompts",
    "BASELINES",
    "CHANNELS",
    "KL_ESTIMATORS",
    "METHODS",
    "NORMS",
    "OBJECTIVES",
    "SCHEDULES",
    "TRAIN_PATHS",
    "TRAJECTORY_FIELDS",
    "TrainConfig",
    "literal_values",
]
