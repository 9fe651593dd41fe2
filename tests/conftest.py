"""Shared fixtures: tiny random models built from configs, an isolated cache, the real model."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets the same session-wide temp cache, never the user's home cache."""
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "t2cache"))


@pytest.fixture
def one_thread():
    """Tiny models run much faster on one torch thread, above all on a busy machine, and runs compare
    exactly (the resume / multi-process tests' subprocesses use OMP_NUM_THREADS=1 too)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_model(arch: str = "llama", seed: int = 0, dtype=torch.float32, **config):
    """A randomly initialised causal LM a few hundred KB big, for fast exact tests (``config``: more config fields)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **config,
        )
    elif arch == "qwen2":
        cfg = Qwen2Config(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **config,
        )
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=128, **config)
    else:  # pragma: no cover
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.config._name_or_path = f"tiny-{arch}"
    model.eval()
    return model


@pytest.fixture(params=["llama", "qwen2", "gpt2"])
def arch(request):
    return request.param


@pytest.fixture
def default_model():
    """The real bundled SmolLM2-135M-Instruct (converted once per test session)."""
    from transformer_squared import load_model

    return load_model("default", progress=False)


def tiny_tokenizer():
    """A word-level tokenizer over ``w0 … w127`` (pad w1, eos w2) with a tiny chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(128)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w1", eos_token="w2", unk_token="w0")
    tokenizer.chat_template = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
    return tokenizer


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved tiny Llama + tokenizer folder that ``load_model(path)`` can read."""
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 1
    model.generation_config.eos_token_id = 2
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
