"""Transformer²: Singular Value Fine-tuning (SVF) experts and self-adaptive two-pass inference.

    import transformer_squared as t2
    model, tokenizer = t2.load_model("default")
    svf = t2.SVFModel(model, targets="mlp")
    svf.apply(t2.Expert.load("experts/math"))
"""

from .errors import T2Error
from .experts import Expert
from .models import load_model
from .svf import Parameterization, SVFLinear, SVFModel

__version__ = "0.1.0"

__all__ = ["Expert", "Parameterization", "SVFLinear", "SVFModel", "T2Error", "__version__", "load_model"]
