"""Importing z vectors saved by the paper's reference implementation (``t2 import sakana``).

The reference code saves its learnable vectors with ``torch.save`` in one of two shapes:

* the state dict of a ``ParameterList``: keys ``"0"``, ``"1"``, … one vector per adapted
  matrix in layer order (for the MLP targets: gate, up, down of layer 0, then layer 1, …);
* a dict from weight name (``model.layers.0.mlp.gate_proj.weight``) to vector.

The values are raw pre-sigmoid z with the Σσ-preserving rescale, which is this package's
``sigmoid`` parameterisation (``max_mult`` 1 unless told otherwise). Files are read with
``torch.load(weights_only=True)``, so nothing but tensors and plain containers is unpickled.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import T2Error
from .experts import Expert

if TYPE_CHECKING:  # pragma: no cover
    from .svf import SVFModel

_PREFIXES = ("base_model.model.", "module.", "model.model.")


def read_reference_file(path: str | os.PathLike) -> list[tuple[str | None, torch.Tensor]]:
    """(name or None, vector) pairs from a reference-format file, in file order.

    Names are module names (``….mlp.gate_proj``) for the weight-name form and None for the
    ParameterList form. Anything else — a pickled object, a model, a non-tensor value — is
    refused with a T2Error.
    """
    path = Path(path)
    if not path.is_file():
        raise T2Error(f"{str(path)!r} does not exist")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise T2Error(f"{str(path)!r} is not a state dict of tensors (refused to unpickle it: {first})") from None
    if isinstance(obj, list | tuple):
        obj = {str(i): v for i, v in enumerate(obj)}
    if not isinstance(obj, Mapping) or not obj:
        raise T2Error(f"{str(path)!r} holds a {type(obj).__name__}, not a non-empty dict of z vectors")
    pairs: list[tuple[str | None, torch.Tensor]] = []
    keys = [str(k) for k in obj]
    by_index = all(re.fullmatch(r"(?:.*\.)?\d+", k) for k in keys)
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise T2Error(f"{str(path)!r}: entry {key!r} is a {type(value).__name__}, not a tensor")
        vec = value.detach().to(torch.float32)
        if vec.dim() == 2 and 1 in vec.shape:
            vec = vec.flatten()
        if vec.dim() != 1:
            raise T2Error(f"{str(path)!r}: entry {key!r} has shape {tuple(value.shape)}; z vectors are 1-D")
        pairs.append((None if by_index else _module_name(str(key)), vec))
    if by_index:  # ParameterList keys may be "0".."N" or "prefix.0": order by the index
        pairs = [
            p for _, p in sorted(zip([int(k.rsplit(".", 1)[-1]) for k in keys], pairs, strict=True), key=lambda t: t[0])
        ]
    return pairs


def _module_name(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :] if prefix != "model.model." else key[len("model.") :]
    for suffix in (".weight", ".z", ".lora_z"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    return key


def import_reference(path: str | os.PathLike, svf: SVFModel, name: str | None = None) -> Expert:
    """An :class:`Expert` for ``svf``'s model from a reference-implementation z file.

    ``svf`` must wrap the model the vectors were trained on, with the same targets (the
    reference trains the MLP matrices) and ``sigmoid`` parameterisation (its ``max_mult`` is
    the one the vectors were trained with; the reference default is 1). Every vector must
    match its matrix's rank; a file with more or fewer vectors than the model's targets, or
    with names the model does not have, is refused.
    """
    if svf.parameterization.kind != "sigmoid":
        raise T2Error(
            "reference z vectors are pre-sigmoid values: wrap the model with "
            "parameterization='sigmoid' (--parameterization sigmoid)"
        )
    pairs = read_reference_file(path)
    layers = svf.layers
    if len(pairs) != len(layers):
        raise T2Error(
            f"{str(path)!r} has {len(pairs)} vectors but the model has {len(layers)} target matrices "
            f"({svf.target_spec!r}); the file is for another model or other targets"
        )
    if pairs[0][0] is None:
        z = {n: vec for n, (_, vec) in zip(layers, pairs, strict=True)}
    else:
        z = {}
        for key, vec in pairs:
            if key not in layers:
                raise T2Error(f"{str(path)!r} has a vector for {key!r}, which is not a target matrix of this model")
            z[key] = vec
        z = {n: z[n] for n in layers}
    for n, vec in z.items():
        if vec.numel() != layers[n].rank:
            raise T2Error(
                f"{str(path)!r}: the vector for {n!r} has length {vec.numel()} but the matrix has "
                f"rank {layers[n].rank}; the file is for another model"
            )
    meta = Expert.from_svf(
        svf, name=name or Path(path).stem, source={"format": "sakana-reference", "file": str(path)}
    ).meta
    return Expert(z, meta)
