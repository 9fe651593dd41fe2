"""Scoring continuations: shared-prefix and per-row layouts agree with unpadded forwards, values and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from transformer_squared import SVFModel, T2Error
from transformer_squared.scoring import OptionScores, encode_continuations, score_groups, score_options

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = [
    ([5, 6, 7, 8], [[9], [10, 11, 12], [13, 14]]),
    ([20, 21], [[22, 23], [24]]),
    ([30, 31, 32, 33, 34, 35], [[36, 37, 38, 39]]),
]


def reference(model, groups):
    """Each continuation on its own, one unpadded row, summed by hand."""
    out = []
    for ctx, conts in groups:
        vals = []
        for c in conts:
            logits = model(torch.tensor([ctx + c])).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)
            vals.append(sum(lp[len(ctx) - 1 + t, c[t]] for t in range(len(c))))
        out.append(torch.stack(vals))
    return out


@pytest.mark.parametrize("share", [True, False])
def test_scores_match_unpadded_forwards(arch, share):
    model = tiny_model(arch)
    with torch.no_grad():
        got = score_groups(model, GROUPS, pad_id=1, share_prefix=share)
        want = reference(model, GROUPS)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packed", [True, False])
def test_both_second_passes_match_unpadded_forwards(arch, packed, monkeypatch):
    """The shared prefix's second pass, packed into one row per group or one row per continuation."""
    import transformer_squared.scoring as scoring

    calls = []
    monkeypatch.setattr(scoring, "_packs", lambda *a: calls.append(a) or packed)
    groups = GROUPS + [([40, 41, 42], [[43, 44, 45, 46, 47], [48], [49, 50]])]  # a group longer than its context
    model = tiny_model(arch)
    with torch.no_grad():
        got = score_groups(model, groups, pad_id=1)
        want = reference(model, groups)
    assert calls  # the second pass asked which form to take
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_packing_needs_sdpa_and_short_continuations():
    from transformer_squared.scoring import _packs

    model = tiny_model("llama")
    assert model.config._attn_implementation == "sdpa"
    short = [([5] * 100, [[9, 10, 11]] * 8)]  # 8 answers of 3 tokens after a 100-token prompt
    long_ = [([5] * 100, [[9] * 200] * 8)]  # 8 answers of 200 tokens: one packed row would cost far more
    assert _packs(model, short, 100)
    assert not _packs(model, long_, 100)
    model.config._attn_implementation = "eager"  # eager attention adds the mask as numbers: no boolean mask
    assert not _packs(model, short, 100)


def test_sliding_window_models_keep_one_row_per_continuation():
    """A sliding-window cache keeps fewer keys than a packed row's mask covers: such models are not packed."""
    from transformer_squared.scoring import _packs

    model = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    groups = [([5, 6, 7, 8, 9, 10, 11, 12], [[13, 14], [15, 16, 17]])]  # context longer than the window
    assert not _packs(model, groups, 8)
    with torch.no_grad():
        got = score_groups(model, groups, pad_id=1)
        want = reference(model, groups)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_single_token_continuations_need_no_second_pass():
    model = tiny_model("llama")
    groups = [([5, 6, 7], [[8], [9], [10]]), ([11], [[12], [13]])]
    with torch.no_grad():
        got = score_groups(model, groups, pad_id=1)
    for g, w in zip(got, reference(model, groups), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packed", [True, False])
def test_gradients_to_z_are_the_same_in_both_layouts(packed, monkeypatch):
    import transformer_squared.scoring as scoring

    monkeypatch.setattr(scoring, "_packs", lambda *a: packed)
    model = tiny_model("qwen2")
    svf = SVFModel(model, cache=False)
    torch.manual_seed(0)
    for p in svf.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    svf.path = "factored"
    grads = []
    for share in (True, False):
        for p in svf.parameters():
            p.grad = None
        scores = score_groups(model, GROUPS, pad_id=1, share_prefix=share)
        sum(s.sum() for s in scores).backward()
        grads.append(torch.cat([p.grad.flatten() for p in svf.parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_score_options_groups_shared_and_distinct_contexts():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    same = [("w5 w6 w7", " w8"), ("w5 w6 w7", " w9 w33")]
    partial = [("w5 w6 w8", " w33 w34"), ("w5 w6 w9", " w33 w34")]  # Winogrande-style: option in the context
    with torch.no_grad():
        a, b = score_options(model, tok, [same, partial], batch_size=2)
        alone = [score_options(model, tok, [[pair]])[0].logp[0] for pair in same + partial]
    torch.testing.assert_close(torch.cat([a.logp, b.logp]), torch.stack(alone), rtol=1e-5, atol=1e-5)
    assert a.n_tokens.tolist() == [1, 2] and a.n_chars.tolist() == [3, 7]


def test_normalisations_and_errors():
    sc = OptionScores(torch.tensor([-4.0, -3.0]), torch.tensor([4, 1]), torch.tensor([8, 2]))
    assert sc.normalised("sum").argmax() == 1
    torch.testing.assert_close(sc.normalised("token"), torch.tensor([-1.0, -3.0]))
    torch.testing.assert_close(sc.normalised("char"), torch.tensor([-0.5, -1.5]))
    with pytest.raises(T2Error, match="normalisation"):
        sc.normalised("bytes")
    with pytest.raises(T2Error, match="empty"):
        encode_continuations(tiny_tokenizer(), "", [" w5"])


def test_a_peft_wrapped_model_is_asked_through_its_base_signature():
    """PEFT's forward takes **kwargs: the wrapped model's signature decides, so a LoRA model keeps
    only the logits it needs and uses the cache keyword its transformers version expects."""
    import copy

    from peft import LoraConfig, get_peft_model

    from transformer_squared.scoring import accepts_kwarg

    model = tiny_model("llama")
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for name in ("logits_to_keep", "cache", "past_key_values", "no_such_argument"):
        assert accepts_kwarg(wrapped, name) == accepts_kwarg(model, name), name
    assert accepts_kwarg(wrapped, "logits_to_keep")
    # and scoring through the wrapper gives what the unwrapped model gives (B = 0 at init)
    tok = tiny_tokenizer()
    groups = [encode_continuations(tok, "Question: why?\nAnswer:", [" yes", " no, never"])]
    a, b = score_groups(model, groups, tok.pad_token_id), score_groups(wrapped, groups, tok.pad_token_id)
    assert torch.allclose(a[0], b[0], atol=1e-5)
