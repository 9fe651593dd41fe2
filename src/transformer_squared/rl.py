"""Former home of the trainer, kept so that ``from transformer_squared.rl import ...`` keeps working.

The training code lives in :mod:`transformer_squared.training` (one file per idea; see its
docstring). This module only re-exports the names it used to define: import from
``transformer_squared.training`` in new code, and patch there (patching a name here changes nothing).
"""

from .scoring import Batch, make_batch, token_logprobs
from .training.config import (
    AUTO_MICRO_ITEMS,
    AUTO_MICRO_ROWS,
    AUTO_MICRO_SHARED_ROWS,
    AUTO_MICRO_TOKENS,
    AUTOCAST,
    BASELINES,
    CHANNELS,
    KL_ESTIMATORS,
    METHODS,
    NORMS,
    OBJECTIVES,
    SCHEDULES,
    TRAIN_PATHS,
    TRAJECTORY_FIELDS,
    TrainConfig,
)
from .training.distributed import DistInfo, setup_distributed
from .training.losses import compute_advantages, kl_full, kl_k3, policy_loss
from .training.policies import SVFPolicy
from .training.report import warn_if_untrained, write_plot
from .training.rollout import Rollout, safe_rewards, sample_seed
from .training.run_dir import CONFIG_NAME, METRICS_NAME, PLOT_NAME, REWARD_ERRORS_NAME
from .training.trainer import MAX_BAD_STEPS, Trainer, TrainResult, train

__all__ = [
    "AUTOCAST",
    "AUTO_MICRO_ITEMS",
    "AUTO_MICRO_ROWS",
    "AUTO_MICRO_SHARED_ROWS",
    "AUTO_MICRO_TOKENS",
    "BASELINES",
    "CHANNELS",
    "CONFIG_NAME",
    "KL_ESTIMATORS",
    "MAX_BAD_STEPS",
    "METHODS",
    "METRICS_NAME",
    "NORMS",
    "OBJECTIVES",
    "PLOT_NAME",
    "REWARD_ERRORS_NAME",
    "SCHEDULES",
    "TRAIN_PATHS",
    "TRAJECTORY_FIELDS",
    "Batch",
    "DistInfo",
    "Rollout",
    "SVFPolicy",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "compute_advantages",
    "kl_full",
    "kl_k3",
    "make_batch",
    "policy_loss",
    "safe_rewards",
    "sample_seed",
    "setup_distributed",
    "token_logprobs",
    "train",
    "warn_if_untrained",
    "write_plot",
]
