"""generation.py's decoding rules (prompt format, greedy, EOS, stop strings) and streamed generation."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from transformer_squared import SVFModel
from transformer_squared.generation import (
    decode_row,
    eos_ids,
    generate,
    generate_kwargs,
    generate_stream,
    is_greedy,
    render_prompt,
    seeded,
    stop_index,
)


def setup():
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 1
    model.generation_config.eos_token_id = 2
    return model, tiny_tokenizer()


def test_render_prompt_template_and_the_one_fallback():
    tok = tiny_tokenizer()
    messages = [{"role": "system", "content": "w5"}, {"role": "user", "content": "w6 w7"}]
    assert render_prompt(messages, tok) == "w3 w5 w4 w3 w6 w7 w4 "
    tok.chat_template = None
    assert render_prompt(messages, tok) == "Question: w5\n\nw6 w7\nAnswer:"
    assert render_prompt([{"role": "user", "content": "hi"}]) == "Question: hi\nAnswer:"


def test_greedy_rule_and_generate_kwargs():
    tok = tiny_tokenizer()
    assert is_greedy(0.0) and is_greedy(1e-45) and is_greedy(0.7, top_p=0)
    assert not is_greedy(0.7) and not is_greedy(1e-3)
    greedy = generate_kwargs(tok, 5, 1e-300, 1.0)
    assert greedy["do_sample"] is False and greedy["temperature"] is None and greedy["eos_token_id"] == 2
    sampled = generate_kwargs(tok, 5, 0.8, 0.9)
    assert sampled["do_sample"] and sampled["temperature"] == 0.8 and sampled["top_p"] == 0.9
    assert sampled["top_k"] == 0 and sampled["max_new_tokens"] == 5


def test_eos_stop_and_decode_row():
    tok = tiny_tokenizer()
    assert eos_ids(tok) == {2}
    assert stop_index("a b c", ["c", "", "b"]) == 2 and stop_index("a b", ["x"]) is None
    assert stop_index("a b", None) is None
    g = decode_row([5, 6, 2, 1, 1], tok)  # cut after EOS, padding dropped
    assert (g.text, g.num_tokens, g.finished, g.token_ids, g.stopped) == ("w5 w6", 3, True, [5, 6, 2], False)
    g = decode_row([5, 6, 7], tok, stop=[" w6"])
    assert (g.text, g.num_tokens, g.finished, g.stopped) == ("w5", 3, False, True)

    class SeveralEnds:  # some tokenizers (Llama 3, Qwen) end on any of several ids
        eos_token_id = [9, 2]

        def decode(self, ids, skip_special_tokens=True):
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    assert eos_ids(SeveralEnds()) == {9, 2}
    assert decode_row([5, 9, 6], SeveralEnds()).token_ids == [5, 9] and decode_row([5, 2], SeveralEnds()).finished


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_stream_matches_generate(temperature):
    model, tok = setup()
    prompt = render_prompt([{"role": "user", "content": "w5 w6"}], tok)
    with seeded(3, torch.device("cpu")):
        want = generate(model, tok, [prompt], max_new_tokens=8, temperature=temperature)[0]
    pieces = []
    with seeded(3, torch.device("cpu")):
        got = generate_stream(model, tok, prompt, pieces.append, max_new_tokens=8, temperature=temperature)
    assert "".join(pieces) == got.text == want.text
    assert (got.num_tokens, got.finished, got.token_ids) == (want.num_tokens, want.finished, want.token_ids)


def test_generate_stream_stop_string_and_should_stop():
    model, tok = setup()
    prompt = render_prompt([{"role": "user", "content": "w9"}], tok)
    full = generate(model, tok, [prompt], max_new_tokens=10)[0]
    words = full.text.split()
    assert len(words) >= 3
    stop = " " + words[2]
    pieces = []
    got = generate_stream(model, tok, prompt, pieces.append, max_new_tokens=10, stop=[stop])
    assert got.stopped and got.text == "".join(pieces) == full.text[: full.text.find(stop)]
    assert got.num_tokens < full.num_tokens or full.num_tokens == 10
    calls = []
    early = generate_stream(model, tok, prompt, calls.append, max_new_tokens=10, should_stop=lambda: True)
    assert early.num_tokens == 1  # the flag is read after every token


def test_generate_stream_inside_the_expert_weights():
    model, tok = setup()
    svf = SVFModel(model, cache=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    expert = svf.to_expert("e")
    svf.reset()
    prompt = render_prompt([{"role": "user", "content": "w11 w12"}], tok)
    want = generate(model, tok, [prompt], max_new_tokens=6, svf=svf, experts=[expert])[0]
    with svf.weights_for([expert]):
        got = generate_stream(model, tok, prompt, lambda _: None, max_new_tokens=6)
    assert got.text == want.text and svf.active is None
