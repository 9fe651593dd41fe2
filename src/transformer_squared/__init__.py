"""Transformer²: Singular Value Fine-tuning (SVF) experts and self-adaptive two-pass inference.

    import transformer_squared as t2
    model, tokenizer = t2.load_model("default")
    svf = t2.SVFModel(model, targets="mlp")
    svf.apply(t2.Expert.load("experts/math"))

Training on your own data with your own reward (README "Your own task"):

    task = t2.get_task("generic", source="examples/capitals.jsonl", prompt_field="question",
                       answer_field="answer", reward="examples/capitals_reward.py:reward", domain="geography")
    result = t2.train(task=task, out="runs/capitals", steps=4, batch_size=4)
    adaptive = t2.AdaptiveModel(svf, tokenizer, [t2.Expert.load("runs/capitals")], strategy="prompt")
"""

from typing import Any

from .errors import T2Error
from .experts import Expert
from .models import load_model
from .svf import Parameterization, SVFLinear, SVFModel

__version__ = "0.1.0"

# Imported on first use, so that `import transformer_squared` stays light.
_LAZY = {
    "train": ("api", "train"),
    "TrainConfig": ("training", "TrainConfig"),
    "TrainResult": ("training", "TrainResult"),
    "AdaptiveModel": ("adapt", "AdaptiveModel"),
    "evaluate": ("evaluation", "evaluate"),
    "get_task": ("tasks", "get_task"),
    "Task": ("tasks", "Task"),
    "TaskProtocol": ("tasks", "TaskProtocol"),
    "Item": ("tasks", "Item"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdaptiveModel",
    "Expert",
    "Item",
    "Parameterization",
    "SVFLinear",
    "SVFModel",
    "T2Error",
    "Task",
    "TaskProtocol",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "evaluate",
    "get_task",
    "load_model",
    "train",
]
