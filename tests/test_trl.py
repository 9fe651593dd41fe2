"""SVF inside TRL's GRPOTrainer (docs/trl.md): a tiny random model, a `datasets` dataset, a reward callable.

The z vectors are the only parameters TRL trains, and the KL reference is the same model with SVF
switched off (no second model is loaded: the tiny model has no checkpoint TRL could load).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from conftest import tiny_model, tiny_tokenizer  # noqa: E402

from transformer_squared import Expert, SVFModel  # noqa: E402
from transformer_squared.errors import T2Error  # noqa: E402
from transformer_squared.trl_grpo import GRPOConfig, SVFGRPOTrainer, SVFReference  # noqa: E402


def _svf():
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 1
    model.generation_config.eos_token_id = 2
    return SVFModel(model, targets="mlp", progress=False)


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=0.05,
        beta=0.1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        bf16=False,
        seed=0,
        disable_tqdm=True,
    )
    base.update(kw)
    return GRPOConfig(**base)


def test_grpo_trains_only_z_with_the_base_as_reference(tmp_path, one_thread):
    svf = _svf()
    base_w = {n: p.detach().clone() for n, p in svf.model.named_parameters() if not n.endswith(".z")}
    z0 = {k: v.clone() for k, v in svf.state().items()}
    ds = datasets.Dataset.from_list([{"prompt": f"w{5 + i} w{6 + i}", "answer": f"w{10 + i}"} for i in range(8)])
    seen: list[dict] = []

    def reward(completions, answer, **columns):  # TRL's signature: dataset columns as keyword lists
        seen.append({"n": len(completions), "answer": list(answer), "prompts": list(columns["prompts"])})
        return [float(a in c) + 0.1 * len(c.split()) for c, a in zip(completions, answer, strict=True)]

    trainer = SVFGRPOTrainer(
        svf, reward_funcs=reward, args=_args(tmp_path), train_dataset=ds, processing_class=tiny_tokenizer()
    )
    assert isinstance(trainer.ref_model, SVFReference) and trainer.beta == 0.1
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".z") for n in trainable)
    assert sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) == svf.num_trainable_parameters()
    ref_calls = []
    orig = SVFReference.forward

    def counting(self, *a, **k):
        ref_calls.append(1)
        return orig(self, *a, **k)

    SVFReference.forward = counting
    try:
        trainer.train()
    finally:
        SVFReference.forward = orig
    assert ref_calls, "TRL never asked the reference model for log-probs"
    assert seen and seen[0]["n"] == 4 and set(seen[0]["answer"]) <= {f"w{10 + i}" for i in range(8)}
    moved = max((svf.state()[k] - z0[k]).abs().max().item() for k in z0)
    assert moved > 1e-4, "z did not move"
    for n, p in svf.model.named_parameters():
        if n in base_w:
            assert torch.equal(p, base_w[n]), f"base weight {n} changed"
    assert "kl" in trainer.state.log_history[0]

    # the reference is exactly the base model even though z moved
    ids = torch.tensor([[5, 6, 7, 8]])
    fresh = tiny_model("llama")
    with torch.no_grad():
        want = fresh(input_ids=ids).logits
        got = trainer.ref_model(input_ids=ids).logits
        policy = svf.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, want, atol=1e-6)

    out = trainer.save_expert(tmp_path / "expert", domain="toy", task="toy")
    expert = Expert.load(out)
    assert expert.meta["domain"] == "toy" and expert.meta["training"]["trainer"] == "trl.GRPOTrainer"
    other = _svf()
    other.apply(expert)
    for k, v in svf.state().items():
        torch.testing.assert_close(other.state()[k], v)


def test_beta_zero_builds_no_reference(tmp_path):
    svf = _svf()
    ds = datasets.Dataset.from_list([{"prompt": "w5 w6"}] * 4)
    trainer = SVFGRPOTrainer(
        svf,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=_args(tmp_path, beta=0.0),
        train_dataset=ds,
        processing_class=tiny_tokenizer(),
    )
    assert trainer.ref_model is None


def test_refuses_a_second_model(tmp_path):
    svf = _svf()
    with pytest.raises(T2Error, match="no model="):
        SVFGRPOTrainer(svf, model=svf.model, reward_funcs=[], args=_args(tmp_path))


@pytest.mark.parametrize("arch_name", ["llama", "gpt2"])
def test_merged_named_weights_make_a_plain_model_generate_like_the_policy(arch_name):
    """What the trainer sends to vLLM (use_vllm=True): W' under the checkpoint's names, no z."""
    from transformer_squared.trl_grpo import merged_named_weights

    svf = SVFModel(tiny_model(arch_name), targets="mlp", progress=False)
    with torch.no_grad():
        for layer in svf.layers.values():
            layer.z.add_(0.2 * torch.randn_like(layer.z))
    weights = dict(merged_named_weights(svf))
    assert not any(n.endswith(".z") for n in weights)
    plain = tiny_model(arch_name)
    assert set(weights) == {n for n, _ in plain.named_parameters()}
    plain.load_state_dict(weights, strict=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, svf.model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
