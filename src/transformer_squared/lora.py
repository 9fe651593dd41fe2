"""Former home of the LoRA baseline, kept so that ``from transformer_squared.lora import ...`` keeps working.

:class:`LoRAPolicy` lives in :mod:`transformer_squared.training.policies` and
:func:`apply_adapter` (``t2 eval --lora``) in :mod:`transformer_squared.models`.
"""

from .models import ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_adapter
from .training.policies import DEFAULT_LORA_TARGETS as DEFAULT_TARGETS
from .training.policies import TRAINING_NAME, LoRAPolicy

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "DEFAULT_TARGETS", "TRAINING_NAME", "LoRAPolicy", "apply_adapter"]
