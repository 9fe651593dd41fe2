"""Teacher-forced scoring: the log-likelihood of given continuations (answer options) after a context.

This is the one primitive behind multiple-choice evaluation by log-likelihood (``t2 eval --mode
loglik``, as lm-eval scores ARC or HellaSwag), the exact policy gradient over a finite answer set
(``t2 train --objective exact``), and letter scoring after a chat prompt. It is differentiable:
with gradients enabled, the scores carry gradients to whatever is trainable in the model (SVF z).

A *group* is one context with the continuations to score after it. With ``share_prefix=True``
each context is encoded once, so a 4-option question costs one pass over the question plus one
over its options, instead of four passes over question + option. The second pass takes one of two
forms. *Packed* (llama, qwen2 and gpt2 models on PyTorch's SDPA attention without a sliding
window, when the continuations are short next to their context): a group's continuations are laid end to end in one row over the context's cache,
each with its own positions and a block mask that lets it see the context and its own earlier
tokens only. Otherwise the cache is repeated once per continuation and each continuation is a
row. Packing saves the repeated cache and its gradient, and CPU attention's backward is much
faster on a few long rows than on many short ones (an ARC-Easy RL update of 4 prompts × 8 short
answers under bf16: 4.2 s → 3.1 s). All layouts give the same numbers (tested).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .errors import T2Error

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from .svf import SVFModel
    from .tasks.base import TaskProtocol

Group = tuple[list[int], list[list[int]]]  # (context ids, [continuation ids, ...])


@dataclass
class OptionScores:
    """Scores of one group's continuations: Σ_t log p, token counts and character counts."""

    logp: torch.Tensor  # (n,) summed log-probability of each continuation (float32)
    n_tokens: torch.Tensor  # (n,) tokens in each continuation
    n_chars: torch.Tensor  # (n,) characters in each continuation's text (lm-eval's acc_norm unit)

    def normalised(self, norm: str) -> torch.Tensor:
        """The per-option score that picks an answer: ``sum``, per ``token`` mean, or per ``char``."""
        if norm == "sum":
            return self.logp
        if norm == "token":
            return self.logp / self.n_tokens.clamp_min(1).to(self.logp.dtype)
        if norm == "char":
            return self.logp / self.n_chars.clamp_min(1).to(self.logp.dtype)
        raise T2Error(f"unknown normalisation {norm!r}; use sum, token or char")


NORMS = ("token", "char", "sum")


def encode_continuations(tokenizer: PreTrainedTokenizerBase, context: str, continuations: Sequence[str]) -> Group:
    """Token ids of a context and of each continuation as they appear after it.

    As lm-eval does, a continuation's ids are those of ``context + continuation`` past the
    context's own ids, so a leading space merges into the first option token exactly as it would
    in running text; where the tokenizer merges across the boundary, the continuation is encoded
    on its own instead.
    """
    ctx = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    if not ctx:
        raise T2Error("a scoring context must not be empty")
    conts = []
    for text in continuations:
        whole = list(tokenizer(context + text, add_special_tokens=False)["input_ids"])
        cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else []
        if not cont:
            cont = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not cont:
            raise T2Error(f"continuation {text!r} encodes to no tokens")
        conts.append(cont)
    return ctx, conts


def accepts_kwarg(model: nn.Module, name: str) -> bool:
    """Whether the causal LM's ``forward`` takes ``name`` (``logits_to_keep``, ``cache``, ...).

    A PEFT wrapper forwards ``**kwargs``, so its own signature says nothing: the wrapped model's is read.
    """
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    try:
        return name in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def keep_last(n: int, length: int, device: torch.device | str) -> torch.Tensor:
    """``logits_to_keep`` for the last ``n`` of ``length`` positions, given as indices.

    With an int the model slices its hidden states (``h[:, -n:]``), a strided view, and the LM
    head's matmul on a view falls back to a batched product that first copies the whole
    (vocab x hidden) weight; gathering the positions by index makes a contiguous tensor instead.
    The same logits up to float rounding (another kernel runs the product: about 1e-6 in float32,
    tested); on the default model's head, one row under bf16 autocast went from 278 to 9 ms and
    eight rows in float32 from 273 to 51 ms (2 CPU cores, one thread).
    """
    return torch.arange(length - n, length, device=device)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _gather_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in float32, for logits (..., V) and targets (...)."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    lp = -F.cross_entropy(flat, targets.reshape(-1), reduction="none")
    return lp.view(targets.shape)


def score_groups(
    model: nn.Module, groups: Sequence[Group], pad_id: int, *, share_prefix: bool = True
) -> list[torch.Tensor]:
    """Σ_t log p(continuation_t | context, continuation_<t) for every continuation of every group.

    Returns one float32 tensor (n_continuations,) per group, differentiable when gradients are
    enabled. All groups go through the model in one batch: callers choose the batch size.
    """
    if not groups:
        return []
    lp, mask = continuation_token_logprobs(model, groups, pad_id, share_prefix=share_prefix)
    flat = (lp * mask).sum(dim=1)
    out, start = [], 0
    for _, conts in groups:
        out.append(flat[start : start + len(conts)])
        start += len(conts)
    return out


def continuation_token_logprobs(
    model: nn.Module, groups: Sequence[Group], pad_id: int, *, share_prefix: bool = True, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each continuation token, (R, L) float32 with a (R, L) mask, rows in group order.

    R is the number of continuations over all groups and L the longest one; ``temperature`` > 0
    scores the tempered distribution (what sampling at that temperature drew from). This is what
    the RL update needs: the K completions of a prompt form one group, so the prompt is encoded
    once (``share_prefix``) instead of K times.
    """
    device = next(model.parameters()).device
    rows_group = [g for g, (_, conts) in enumerate(groups) for _ in conts]
    rows_cont = [list(c) for _, conts in groups for c in conts]
    if not rows_cont:
        raise T2Error("nothing to score: no continuations")
    if any(not c for c in rows_cont):
        raise T2Error("every continuation needs at least one token")
    scale = 1.0 / temperature if temperature > 0 and temperature != 1.0 else None
    targets, tmask = _right_pad(rows_cont, pad_id, device)
    if share_prefix:
        lp = _shared_logprobs(model, groups, rows_group, rows_cont, targets, pad_id, device, scale)
    else:
        lp = _row_logprobs(model, groups, rows_group, rows_cont, targets, pad_id, device, scale)
    mask = tmask.to(torch.float32)
    return lp * mask, mask


def _scaled(logits: torch.Tensor, scale: float | None) -> torch.Tensor:
    return logits if scale is None else logits.float() * scale


def _shared_logprobs(model: nn.Module, groups, rows_group, rows_cont, targets, pad_id, device, scale) -> torch.Tensor:
    ids, mask = _left_pad([ctx for ctx, _ in groups], pad_id, device)
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    longest = max(len(c) for c in rows_cont)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=longest > 1)
    if accepts_kwarg(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep_last(1, ids.shape[1], device)
    out = model(**kwargs)
    index = torch.tensor(rows_group, dtype=torch.long, device=device)
    first = _gather_logp(_scaled(out.logits[:, -1][index], scale), targets[:, 0])
    if longest == 1:
        return first[:, None]
    cache = getattr(out, "cache", None) or out.past_key_values
    cache_kw = "cache" if accepts_kwarg(model, "cache") else "past_key_values"  # renamed in transformers 5.x
    if _packs(model, groups, ids.shape[1]):
        rest = _packed_rest(model, groups, cache, cache_kw, mask, pos, targets, pad_id, device, scale)
        return torch.cat([first[:, None], rest], dim=1)
    cache.reorder_cache(index)  # one copy of each context's keys/values per continuation
    # feed c[0..L-2] to predict c[1..L-1]
    inp, cmask = _right_pad([c[:-1] for c in rows_cont], pad_id, device)
    attn = torch.cat([mask[index], cmask], dim=1)
    start = pos[:, -1][index] + 1
    pos2 = start[:, None] + torch.arange(inp.shape[1], device=device)[None, :]
    out2 = model(input_ids=inp, attention_mask=attn, position_ids=pos2, use_cache=True, **{cache_kw: cache})
    rest = _gather_logp(_scaled(out2.logits, scale), targets[:, 1:])
    return torch.cat([first[:, None], rest], dim=1)


# Model types whose attention takes a custom boolean 4D mask as it is, with rotary or absolute
# positions from position_ids (tested: tests/test_scoring.py); others keep the repeated cache.
PACKABLE_MODEL_TYPES = frozenset({"llama", "qwen2", "gpt2"})


def _packs(model: nn.Module, groups, width: int) -> bool:
    """Whether the second pass packs each group's continuations into one row (see the module docstring).

    Needs a known model type on SDPA attention (a boolean 4D mask is passed through as it is) with
    full attention in every layer (a sliding-window cache keeps fewer keys than the mask covers),
    and pays off while the packed rows' attention area stays within twice that of one row per
    continuation (short answers); long continuations keep one row each.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PACKABLE_MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    lens = [[len(c) - 1 for c in conts] for _, conts in groups]
    t_max = max(sum(ls) for ls in lens)
    longest = max(n for ls in lens for n in ls)
    rows = sum(len(ls) for ls in lens)
    return len(groups) * t_max * (width + t_max) <= 2 * rows * longest * (width + longest)


def _packed_rest(model, groups, cache, cache_kw, mask, pos, targets, pad_id, device, scale) -> torch.Tensor:
    """log p of continuation tokens 1..L-1, (R, L-1), each group's continuations in one row over its cache.

    Row g holds c[:-1] of every continuation of group g, end to end; each continuation's tokens
    take the positions that follow the context and see the context (its unpadded part) and their
    own earlier tokens, through a boolean (G, 1, T, W + T) mask.
    """
    n_groups, width = mask.shape
    lens = [[len(c) - 1 for c in conts] for _, conts in groups]
    t_max = max(1, max(sum(ls) for ls in lens))
    inp = torch.full((n_groups, t_max), pad_id, dtype=torch.long)
    pos2 = torch.zeros((n_groups, t_max), dtype=torch.long)
    allow = torch.zeros((n_groups, t_max, width + t_max), dtype=torch.bool)
    allow[:, :, :width] = mask.bool().cpu()[:, None, :]
    start = (pos[:, -1] + 1).cpu()
    rows = sum(len(ls) for ls in lens)
    where = torch.zeros((rows, targets.shape[1] - 1, 2), dtype=torch.long)  # (group, packed index) per token
    nxt = torch.zeros((n_groups, t_max), dtype=torch.long)  # the token each packed position predicts
    r = 0
    for g, (_, conts) in enumerate(groups):
        at = 0
        for c, n in zip(conts, lens[g], strict=True):
            if n:
                inp[g, at : at + n] = torch.tensor(list(c[:-1]), dtype=torch.long)
                nxt[g, at : at + n] = torch.tensor(list(c[1:]), dtype=torch.long)
                pos2[g, at : at + n] = start[g] + torch.arange(n)
                allow[g, at : at + n, width + at : width + at + n] = torch.ones(n, n, dtype=torch.bool).tril()
                where[r, :n, 1] = at + torch.arange(n)
            where[r, :, 0] = g
            at += n
            r += 1
    out = model(
        input_ids=inp.to(device),
        attention_mask=allow[:, None].to(device),
        position_ids=pos2.to(device),
        use_cache=True,
        **{cache_kw: cache},
    )
    lp = _gather_logp(_scaled(out.logits, scale), nxt.to(device))  # (G, T): no second vocabulary-wide copy
    where = where.to(device)
    return lp[where[..., 0], where[..., 1]]  # (R, L-1); padding positions are masked by the caller


def _row_logprobs(model: nn.Module, groups, rows_group, rows_cont, targets, pad_id, device, scale) -> torch.Tensor:
    ctx_ids, ctx_mask = _left_pad([groups[g][0] for g in rows_group], pad_id, device)
    _, cont_mask = _right_pad(rows_cont, pad_id, device)
    ids = torch.cat([ctx_ids, targets], dim=1)
    mask = torch.cat([ctx_mask, cont_mask], dim=1)
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    width = targets.shape[1]
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    if accepts_kwarg(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep_last(width + 1, ids.shape[1], device)
    logits = model(**kwargs).logits[:, -(width + 1) : -1]
    return _gather_logp(_scaled(logits, scale), targets)


def score_options(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[Sequence[tuple[str, str]]],
    *,
    batch_size: int = 16,
    share_prefix: bool = True,
) -> list[OptionScores]:
    """Scores of each item's options, where an item is a list of (context, continuation) pairs.

    Options of one item usually share their context (a question and its answers); where they do
    not (Winogrande's partial scoring puts the option into the context), each distinct context
    becomes its own group. ``batch_size`` counts items per forward.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[OptionScores] = []
    for b0 in range(0, len(requests), batch_size):
        chunk = requests[b0 : b0 + batch_size]
        groups: list[Group] = []
        where: list[list[tuple[int, int]]] = []  # per item, per option: (group, index in group)
        for pairs in chunk:
            by_ctx: dict[str, int] = {}
            places = []
            for ctx, cont in pairs:
                if ctx not in by_ctx:
                    by_ctx[ctx] = len(groups)
                    groups.append((list(tokenizer(ctx, add_special_tokens=False)["input_ids"]), []))
                g = by_ctx[ctx]
                _, ids = encode_continuations(tokenizer, ctx, [cont])
                groups[g][1].append(ids[0])
                places.append((g, len(groups[g][1]) - 1))
            where.append(places)
        scores = score_groups(model, groups, pad_id, share_prefix=share_prefix)
        for pairs, places in zip(chunk, where, strict=True):
            logp = torch.stack([scores[g][j] for g, j in places])
            n_tok = torch.tensor([len(groups[g][1][j]) for g, j in places])
            n_chr = torch.tensor([len(cont) for _, cont in pairs])
            results.append(OptionScores(logp, n_tok, n_chr))
    return results


# ---------------------------------------------------------------------------------------
# The trainer's teacher-forced layout (prompt left-padded, completion right-padded)
# ---------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Prompts left-padded and completions right-padded, so every completion starts at one column."""

    input_ids: torch.Tensor  # (n, P + C)
    attention_mask: torch.Tensor  # (n, P + C)
    position_ids: torch.Tensor  # (n, P + C), as generation computed them
    targets: torch.Tensor  # (n, C) completion tokens
    mask: torch.Tensor  # (n, C) 1.0 on real completion tokens

    @property
    def completion_len(self) -> int:
        return self.targets.shape[1]


def make_batch(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device | str = "cpu",
) -> Batch:
    """Lay out prompt + completion rows for one teacher-forced forward (see :class:`Batch`)."""
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError("need one completion per prompt, and at least one row")
    p_len = max(len(p) for p in prompt_ids)
    c_len = max(1, max(len(c) for c in completion_ids))
    n = len(prompt_ids)
    ids = torch.full((n, p_len + c_len), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p_len + c_len), dtype=torch.long)
    targets = torch.full((n, c_len), pad_id, dtype=torch.long)
    mask = torch.zeros((n, c_len), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        start = p_len - len(p)
        ids[i, start:p_len] = torch.tensor(list(p), dtype=torch.long)
        attn[i, start : p_len + len(c)] = 1
        if c:
            ids[i, p_len : p_len + len(c)] = torch.tensor(list(c), dtype=torch.long)
            targets[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
            mask[i, : len(c)] = 1.0
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids.to(device), attn.to(device), pos.to(device), targets.to(device), mask.to(device))


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log π(target) at each position (N, T) in float32; masked positions are exactly 0.

    ``temperature`` > 0 scores the tempered distribution the samples were drawn from.
    """
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    safe = torch.where(mask.bool(), targets, torch.full_like(targets, -100))
    lp = -F.cross_entropy(logits.transpose(1, 2), safe, reduction="none", ignore_index=-100)
    return lp * mask


@torch.no_grad()
def continuation_logprobs(model: nn.Module, pad_id: int, pairs: Sequence[tuple[list[int], list[int]]], device):
    """Summed log-probability of each continuation after its prompt, and its token count.

    One teacher-forced forward over the batch laid out by :func:`make_batch` (the trainer's own
    layout, with position ids that skip the left padding).
    """
    batch = make_batch([p for p, _ in pairs], [c for _, c in pairs], pad_id, device)
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).logits
    prompt_len = batch.input_ids.shape[1] - batch.completion_len
    lp = token_logprobs(logits[:, prompt_len - 1 : -1], batch.targets, batch.mask)
    return lp.sum(dim=1), batch.mask.sum(dim=1)


def last_logits(model: nn.Module, enc) -> torch.Tensor:
    """Next-token logits at the last position only (the LM head over every position is ~20% of a
    prefill on the default model); models whose forward lacks ``logits_to_keep`` compute them all."""
    try:
        keep = keep_last(1, enc["input_ids"].shape[1], enc["input_ids"].device)
        return model(**enc, logits_to_keep=keep).logits[:, -1]
    except TypeError:
        return model(**enc).logits[:, -1]


@torch.no_grad()
def mean_reference_loglik(
    model: nn.Module | SVFModel, tokenizer: PreTrainedTokenizerBase, task: TaskProtocol, items, batch_size: int = 16
) -> float | None:
    """Mean per-token log-likelihood of the items' reference answers under ``model`` (a module or
    an SVFModel); the tie-breaker of the CEM search and of the trainer's model selection. None
    when no item has a reference."""
    module = model if isinstance(model, torch.nn.Module) else model.model  # an SVFModel: its wrapped module
    device = next(module.parameters()).device
    total, count = 0.0, 0.0
    for s in range(0, len(items), batch_size):
        chunk = [it for it in items[s : s + batch_size] if it.reference]
        if not chunk:
            continue
        pairs = [
            (
                tokenizer(task.prompt(it, tokenizer), add_special_tokens=False)["input_ids"],
                tokenizer(it.reference, add_special_tokens=False)["input_ids"],
            )
            for it in chunk
        ]
        sums, lengths = continuation_logprobs(module, tokenizer.pad_token_id, pairs, device)
        total += sums.sum().item()
        count += lengths.sum().item()
    return total / count if count else None


__all__ = [
    "NORMS",
    "Batch",
    "OptionScores",
    "continuation_logprobs",
    "continuation_token_logprobs",
    "encode_continuations",
    "last_logits",
    "make_batch",
    "mean_reference_loglik",
    "score_groups",
    "score_options",
    "token_logprobs",
]
