"""Training experts with reinforcement learning (REINFORCE), and the supervised / LoRA baselines.

    from transformer_squared.training import TrainConfig, train
    result = train(TrainConfig(task="arc_easy", out="experts/arc_easy", steps=100))

One idea per file:

==================  =======================================================================
``config.py``       :class:`TrainConfig`: every option, its choices, default, help and checks
``trainer.py``      :class:`Trainer` (setup, data order, rollout, update, the loop) and :func:`train`
``rollout.py``      a step's prompts, sampled completions and rewards (:class:`Rollout`)
``gradients.py``    the teacher-forced forwards of a rollout and the backward of its loss
``losses.py``       the loss math on plain tensors: advantages, KL, REINFORCE, exact objective
``optim.py``        AdamW, the warmup + constant/cosine LR schedule, clip, step or skip
``step_stats.py``   a step's sums over processes, its metrics row, weight/gradient drift
``validation.py``   scoring the policy on val (the best-weights choice), the saved summary
``policies.py``     what is trained: the :class:`Policy` handles, SVF and the LoRA baseline
``distributed.py``  torch.distributed under ``torchrun``
``run_dir.py``      the ``--out`` folder: refuse / overwrite, resume checks, the best weights
``checkpoint.py``   the checkpoint folder ``resume`` continues from
``report.py``       metrics.jsonl, tensorboard, train_curve.png, messages
==================  =======================================================================

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
``Question: ...\\nAnswer:``; ``letter``: the option letter's log-probability as the first token
after the chat prompt). The loss is −E_π[r] = −Σ_j π_j r_j averaged over the B items (plus
λ·KL(π‖π_base) over the options, exact too), so its gradient is the exact gradient of the
expected reward. Validation then scores val items by log-likelihood in the same channel.

Every ``eval_every`` steps the policy is evaluated greedily on the task's ``val`` split (never
``test``) and the best one is saved to ``out`` (an expert folder for SVF, a PEFT adapter folder
for LoRA). ``out`` also receives ``metrics.jsonl``, ``train_curve.png``, ``train_config.json``
and ``checkpoint/``, from which ``resume`` continues.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes its share of the B prompts, gradients
are all-reduced (summed; each process's loss is already divided by the global N), rank 0
evaluates and writes files. See docs/training.md.
"""

from ..scoring import Batch, make_batch, token_logprobs
from .config import TRAJECTORY_FIELDS, TrainConfig
from .distributed import DistInfo
from .losses import compute_advantages, exact_objective, kl_full, kl_k3, policy_loss
from .policies import LoRAPolicy, Policy, SVFPolicy
from .report import warn_if_untrained, write_plot
from .rollout import Rollout, safe_rewards, sample_seed
from .run_dir import CONFIG_NAME
from .trainer import Trainer, TrainResult, train

__all__ = [
    "CONFIG_NAME",
    "TRAJECTORY_FIELDS",
    "Batch",
    "DistInfo",
    "LoRAPolicy",
    "Policy",
    "Rollout",
    "SVFPolicy",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "compute_advantages",
    "exact_objective",
    "kl_full",
    "kl_k3",
    "make_batch",
    "policy_loss",
    "safe_rewards",
    "sample_seed",
    "token_logprobs",
    "train",
    "warn_if_untrained",
    "write_plot",
]
