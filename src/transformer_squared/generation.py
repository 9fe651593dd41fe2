"""Batched generation with the KV cache (left padding), greedy or sampled; and the decoding rules.

A thin layer over ``model.generate`` that returns decoded completions plus token counts, and
optionally gives each row its own expert (mixed-expert batches, through ``SVFModel.weights_for``).

This module is the one place that says how a prompt is rendered (:func:`render_prompt`), when
decoding is greedy and which ``model.generate`` options follow (:func:`is_greedy`,
:func:`generate_kwargs`), which token ids end a completion (:func:`eos_ids`) and where a stop
string cuts it (:func:`stop_index`); tasks, evaluation and ``t2 serve`` all use these.
:func:`generate_stream` is :func:`generate` for one row whose text is handed out as it is decoded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import T2Error

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from .svf import SVFModel

# A temperature below this decodes greedily (dividing the logits by ~1e-45 overflows).
GREEDY_BELOW = 1e-3


@dataclass
class Generation:
    """One completion: its text, how many tokens were generated, and whether it hit EOS.

    ``stopped``: the text was cut at a stop string.
    """

    text: str
    num_tokens: int
    finished: bool
    token_ids: list[int]
    stopped: bool = False


# ---------------------------------------------------------------------------------------
# The decoding rules
# ---------------------------------------------------------------------------------------
def render_prompt(messages: list[dict[str, str]], tokenizer: Any = None) -> str:
    """The prompt for chat ``messages``: the tokenizer's chat template with the generation prompt,
    or, for a tokenizer without one, ``Question: <every non-assistant turn>\\nAnswer:``.

    Errors of the template itself (jinja rejects a role) propagate.
    """
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    user = "\n\n".join(m["content"] for m in messages if m.get("role") != "assistant")
    return f"Question: {user}\nAnswer:"


def is_greedy(temperature: float, top_p: float = 1.0) -> bool:
    """Whether these sampling options decode greedily (a temperature below :data:`GREEDY_BELOW`, or top_p 0)."""
    return temperature < GREEDY_BELOW or top_p == 0


def generate_kwargs(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    """``model.generate`` options: sampling at ``temperature`` and ``top_p`` (top-k off), or greedy."""
    kwargs = dict(
        max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    if is_greedy(temperature, top_p):
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    return kwargs


def eos_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The token ids that end a completion (a tokenizer's ``eos_token_id`` may be a list)."""
    eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def stop_index(text: str, stop: Sequence[str] | None) -> int | None:
    """Where the first of the ``stop`` strings begins in ``text`` (None: none occurs; empty strings ignored)."""
    cuts = [i for i in (text.find(s) for s in stop or () if s) if i >= 0]
    return min(cuts) if cuts else None


def decode_ids(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """One row of token ids as text, special tokens dropped."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert isinstance(text, str)  # decode gives a list only for a batch of rows
    return text


def decode_row(row: Sequence[int], tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] | None = None) -> Generation:
    """One generated row: cut after its first EOS (kept; the padding after it dropped), decoded,
    and cut before its first stop string."""
    ends = eos_ids(tokenizer)
    ids = list(row)
    for i, t in enumerate(ids):
        if t in ends:
            ids = ids[: i + 1]
            break
    text = decode_ids(tokenizer, ids)
    cut = stop_index(text, stop)
    return Generation(
        text=text if cut is None else text[:cut],
        num_tokens=len(ids),
        finished=bool(ids) and ids[-1] in ends,
        token_ids=ids,
        stopped=cut is not None,
    )


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Inside the block torch's generator is seeded with ``seed`` (nothing when None); the caller's
    random state is restored after."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------
def generate(
    model,  # a transformers causal LM (generate() comes from its GenerationMixin)
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    svf: SVFModel | None = None,
    experts: Sequence | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    progress=None,
) -> list[Generation]:
    """Generate one completion per prompt (already formatted, e.g. with :func:`render_prompt`).

    ``experts`` (with ``svf``) gives each prompt its own expert or ``None`` for the base
    weights; rows are batched together regardless of which expert they carry.
    ``progress`` is an optional callable taking the number of prompts just finished.
    """
    if max_new_tokens < 1:
        raise T2Error("max_new_tokens must be at least 1")
    if batch_size < 1:
        raise T2Error("batch_size must be at least 1")
    if experts is not None and (svf is None or len(experts) != len(prompts)):
        raise T2Error("per-prompt experts need the SVFModel and one entry per prompt")
    device = _device(model)
    gen_kwargs = generate_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    out: list[Generation] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with seeded(seed, device):  # seeded sampling without disturbing the caller's random state
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start : start + batch_size])
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                ctx = (
                    svf.weights_for(experts[start : start + batch_size])
                    if experts is not None and svf is not None  # per-prompt experts come with svf (checked above)
                    else contextlib.nullcontext()
                )
                with torch.no_grad(), ctx:
                    seqs = model.generate(**enc, **gen_kwargs)
                out += [decode_row(row, tokenizer, stop) for row in seqs[:, enc["input_ids"].shape[1] :].tolist()]
                if progress is not None:
                    progress(len(chunk))
    finally:
        tokenizer.padding_side = old_side
    return out


def sample_group(
    model,  # a transformers causal LM (generate() comes from its GenerationMixin)
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    k: int,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[Generation]:
    """``k`` sampled completions of one prompt, with the prompt encoded once (:func:`sample_groups`)."""
    return sample_groups(
        model, tokenizer, [prompt], k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )


def sample_groups(
    model,  # a transformers causal LM (generate() comes from its GenerationMixin)
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    k: int,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[Generation]:
    """``k`` sampled completions of each prompt (prompt-major), every prompt encoded once.

    The prompts (all but their last token, left-padded together) are run once, the KV cache is
    repeated ``k`` times, and ``model.generate`` continues from it for all ``len(prompts) * k``
    rows in one decoding loop. The samples are the ones ``generate`` would draw for the rows
    ``[p for p in prompts for _ in range(k)]`` with the same seed (same logits, same random
    draws: tested), for one prefill per prompt instead of ``k`` and one decoding loop instead of
    one per prompt.
    """
    if k < 1 or max_new_tokens < 1:
        raise T2Error("k and max_new_tokens must be at least 1")
    if not prompts:
        return []
    device = _device(model)
    rows = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if min(len(r) for r in rows) < 2:  # a prompt with nothing to cache: sample the plain way
        return generate(
            model,
            tokenizer,
            [p for p in prompts for _ in range(k)],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            batch_size=len(prompts) * k,
            seed=seed,
        )
    from .scoring import accepts_kwarg, keep_last

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids(tokenizer))  # masked anyway
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left-padded, as generate() pads
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # generate()'s positions for padded rows
    gen_kwargs = generate_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    prefill = dict(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
    if accepts_kwarg(model, "logits_to_keep"):  # the prefill's logits are not used: keep one position
        prefill["logits_to_keep"] = keep_last(1, width - 1, device)
    with seeded(seed, device), torch.no_grad():
        cache = model(**prefill).past_key_values
        cache.batch_repeat_interleave(k)
        cache_kw = "cache" if accepts_kwarg(model, "cache") else "past_key_values"
        seqs = model.generate(
            input_ids=ids.repeat_interleave(k, dim=0),
            attention_mask=mask.repeat_interleave(k, dim=0),
            **{cache_kw: cache},
            **gen_kwargs,
        )
    return [decode_row(row, tokenizer) for row in seqs[:, width:].tolist()]


def generate_stream(
    model,  # a transformers causal LM (generate() comes from its GenerationMixin)
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    on_text: Callable[[str], None],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generation:
    """One completion of one prompt, its text handed to ``on_text`` in pieces as it is decoded.

    The same options and result as :func:`generate` for one row (run it inside
    ``svf.weights_for([expert])`` for an expert, inside :func:`seeded` for a seed). Text that may
    be the start of a stop string, or an incomplete character, is held back until it is known
    not to be; generation ends at EOS, at ``max_new_tokens``, at a stop string, or after the token
    during which ``should_stop()`` became true. The pieces joined are the returned text.
    """
    if max_new_tokens < 1:
        raise T2Error("max_new_tokens must be at least 1")
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    stops = [s for s in stop or () if s]
    hold = max((len(s) for s in stops), default=1) - 1

    class _Pieces(BaseStreamer):
        def __init__(self) -> None:
            self.ids: list[int] = []
            self.sent = 0
            self.seen_prompt = False
            self.stopped = False

        def put(self, value: torch.Tensor) -> None:
            if not self.seen_prompt:  # generate() first pushes the prompt
                self.seen_prompt = True
                return
            self.ids.extend(value.reshape(-1).tolist())
            self._push(final=False)

        def end(self) -> None:
            self._push(final=True)

        def _push(self, final: bool) -> None:
            if self.stopped:
                return
            text = decode_ids(tokenizer, self.ids)
            cut = stop_index(text, stops)
            if cut is not None:
                self.stopped, safe = True, cut
            elif final:
                safe = len(text)
            else:
                safe = len(text.rstrip("\ufffd")) - hold  # an incomplete character waits
            if safe > self.sent:
                on_text(text[self.sent : safe])
                self.sent = safe

    streamer = _Pieces()

    class _Halt(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
            halt = streamer.stopped or (should_stop is not None and should_stop())
            return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)

    enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(_device(model))
    with torch.no_grad():
        model.generate(
            **enc,
            **generate_kwargs(tokenizer, max_new_tokens, temperature, top_p),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Halt()]),
        )
    gen = decode_row(streamer.ids, tokenizer, stops)
    gen.stopped = gen.stopped or streamer.stopped
    return gen


def expert_weights(svf: SVFModel, experts: Sequence):
    """Per-row experts for one batch: :meth:`SVFModel.weights_for <transformer_squared.svf.SVFModel.weights_for>`."""
    return svf.weights_for(experts)
