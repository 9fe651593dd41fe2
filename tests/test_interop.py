"""Importing reference-format z vectors and moving experts between models (issue: interoperability)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import tiny_model

from transformer_squared import Expert, SVFModel, load_model
from transformer_squared.cli import main
from transformer_squared.errors import T2Error
from transformer_squared.import_reference import import_reference

IDS = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(5))
MLP = ("gate_proj", "up_proj", "down_proj")


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def reference_adapted(model, raw_z):
    """A copy of ``model`` with each MLP weight replaced by the reference code's formula, written
    out independently of the package: W' = U diag(σ ⊙ sigmoid(z)) Vᵀ · Σσ / Σ(σ ⊙ sigmoid(z))."""
    out = copy.deepcopy(model)
    names = [f"model.layers.{i}.mlp.{p}" for i in range(model.config.num_hidden_layers) for p in MLP]
    for name, z in zip(names, raw_z, strict=True):
        lin = out.get_submodule(name)
        w = lin.weight.detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        m = torch.sigmoid(z.double())
        new = (u * (s * m)) @ vh * (s.sum() / (s * m).sum())
        with torch.no_grad():
            lin.weight.copy_(new.float())
    return out


def raw_vectors(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    ranks = []
    for i in range(model.config.num_hidden_layers):
        for p in MLP:
            w = model.get_submodule(f"model.layers.{i}.mlp.{p}").weight
            ranks.append(min(w.shape))
    return [0.1 + 1.5 * torch.randn(r, generator=g) for r in ranks]


@pytest.mark.parametrize("form", ["parameterlist", "weight_names"])
def test_import_reference_file_gives_the_reference_formula(form, tmp_path):
    model = tiny_model("llama")
    raw = raw_vectors(model)
    if form == "parameterlist":
        state = torch.nn.ParameterList([torch.nn.Parameter(v) for v in raw]).state_dict()
        assert list(state) == [str(i) for i in range(len(raw))]
    else:
        names = [f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in MLP]
        state = dict(reversed(list(zip(names, raw, strict=True))))  # file order must not matter here
    torch.save(state, tmp_path / "z.pt")
    want = logits(reference_adapted(model, raw))
    svf = SVFModel(model, parameterization="sigmoid")
    expert = import_reference(tmp_path / "z.pt", svf)
    assert expert.parameterization.kind == "sigmoid" and expert.meta["source"]["format"] == "sakana-reference"
    svf.apply(expert)
    torch.testing.assert_close(logits(model), want, rtol=1e-4, atol=1e-4)
    svf.reset()
    assert (logits(model) - want).abs().max() > 1e-3  # the vectors really change the model


def test_import_cli_round_trip(tmp_path, tiny_model_dir, capsys):
    model, _ = load_model(str(tiny_model_dir), progress=False)
    raw = raw_vectors(model)
    torch.save(torch.nn.ParameterList([torch.nn.Parameter(v) for v in raw]).state_dict(), tmp_path / "z.pt")
    assert (
        main(["import", "sakana", str(tmp_path / "z.pt"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "e")])
        == 0
    )
    assert "imported 6 vectors" in capsys.readouterr().out
    want = logits(reference_adapted(model, raw))
    expert = Expert.load(tmp_path / "e")
    svf = SVFModel(model, parameterization=expert.parameterization)
    svf.apply(expert)
    torch.testing.assert_close(logits(model), want, rtol=1e-4, atol=1e-4)
    # the folder exists now: refused without --overwrite
    assert (
        main(["import", "sakana", str(tmp_path / "z.pt"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "e")])
        == 2
    )
    assert "already exists" in capsys.readouterr().err


class Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_import_refuses_what_is_not_a_state_dict(tmp_path, capsys):
    svf = SVFModel(tiny_model("llama"), parameterization="sigmoid")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"0": Evil()}, f)
    with pytest.raises(T2Error, match="not a state dict of tensors"):
        import_reference(tmp_path / "evil.pt", svf)
    assert "unpickled arbitrary code" not in capsys.readouterr().out
    torch.save({"0": [1.0, 2.0]}, tmp_path / "list.pt")
    with pytest.raises(T2Error, match="not a tensor"):
        import_reference(tmp_path / "list.pt", svf)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(T2Error, match="not a state dict"):
        import_reference(tmp_path / "junk.pt", svf)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(T2Error, match="not a non-empty dict"):
        import_reference(tmp_path / "tensor.pt", svf)


def test_import_refuses_other_shapes_and_parameterizations(tmp_path):
    model = tiny_model("llama")
    raw = raw_vectors(model)
    svf = SVFModel(model, parameterization="sigmoid")
    torch.save({str(i): v for i, v in enumerate(raw[:-1])}, tmp_path / "short.pt")
    with pytest.raises(T2Error, match="has 5 vectors but the model has 6"):
        import_reference(tmp_path / "short.pt", svf)
    bad = list(raw)
    bad[2] = torch.zeros(7)
    torch.save({str(i): v for i, v in enumerate(bad)}, tmp_path / "shape.pt")
    with pytest.raises(T2Error, match="length 7 but the matrix has rank 32"):
        import_reference(tmp_path / "shape.pt", svf)
    torch.save({f"model.layers.{i}.self_attn.q_proj.weight": v for i, v in enumerate(raw)}, tmp_path / "names.pt")
    with pytest.raises(T2Error, match="not a target matrix"):
        import_reference(tmp_path / "names.pt", svf)
    torch.save({str(i): v for i, v in enumerate(raw)}, tmp_path / "ok.pt")
    with pytest.raises(T2Error, match="parameterization='sigmoid'"):
        import_reference(tmp_path / "ok.pt", SVFModel(tiny_model("llama")))


def test_saved_experts_keep_layer_order(tmp_path):
    svf = SVFModel(tiny_model("llama"))
    e = svf.to_expert("e")
    e.save(tmp_path / "e")
    assert list(Expert.load(tmp_path / "e").z) == list(svf.layers)  # not the file's sorted order


def test_transfer_between_two_models_pairs_in_layer_order(tmp_path):
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    svf_a = SVFModel(a)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, p in enumerate(svf_a.parameters()):
            p.copy_(1 + 0.1 * (i + 1) * torch.randn(p.shape, generator=g))
    expert = svf_a.to_expert("from-a")
    expert.save(tmp_path / "e")
    loaded = Expert.load(tmp_path / "e")
    svf_b = SVFModel(b)
    with pytest.raises(T2Error, match="trained on other weights"):
        svf_b.apply(loaded)
    moved = loaded.transfer(svf_b)
    assert moved.meta["transferred_from"]["fingerprint"] == expert.meta["fingerprint"]
    svf_b.apply(moved)  # strict checks pass after re-keying
    got = logits(b)
    # by hand: the k-th vector of A's expert rescales the k-th target matrix of B
    ref = copy.deepcopy(tiny_model("llama", seed=1))
    for name, z in zip(svf_b.layers, expert.z.values(), strict=True):
        lin = ref.get_submodule(name)
        u, s, vh = torch.linalg.svd(lin.weight.detach().double(), full_matrices=False)
        with torch.no_grad():
            lin.weight.copy_(((u * (s * z.double())) @ vh).float())
    torch.testing.assert_close(got, logits(ref), rtol=1e-4, atol=1e-4)


def test_transfer_refuses_other_shapes(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    svf_a = SVFModel(tiny_model("llama"))
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    wider = SVFModel(AutoModelForCausalLM.from_config(cfg))
    with pytest.raises(T2Error, match="has 6 vectors but the model has 8 target matrices"):
        svf_a.to_expert("a").transfer(SVFModel(tiny_model("llama", seed=2), targets="attn"))
    with pytest.raises(T2Error, match="rank 48 but the expert's vector has length 32"):
        svf_a.to_expert("a").transfer(wider)
    with pytest.raises(T2Error, match="parameterization"):
        svf_a.to_expert("a").transfer(SVFModel(tiny_model("llama", seed=3), parameterization="sigmoid"))


def test_transfer_cli(tmp_path, tiny_model_dir, capsys):
    svf_a = SVFModel(tiny_model("llama", seed=7))
    svf_a.to_expert("a").save(tmp_path / "a")
    assert (
        main(
            ["transfer", "--expert", str(tmp_path / "a"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "b")]
        )
        == 0
    )
    assert "paired in layer order" in capsys.readouterr().out
    model, _ = load_model(str(tiny_model_dir), progress=False)
    SVFModel(model).apply(Expert.load(tmp_path / "b"))  # strict: now keyed for this model


def test_trainer_saves_experts_in_layer_order(tmp_path):
    from transformer_squared.training import SVFPolicy

    policy = SVFPolicy(tiny_model("llama"))
    state = dict(sorted(policy.svf.state().items()))  # how a checkpoint reads back
    assert list(state) != list(policy.svf.layers)
    policy.save(tmp_path / "e", state, "e", {"task": "gsm8k"})
    assert list(Expert.load(tmp_path / "e").z) == list(policy.svf.layers)


def test_transfer_between_same_architectures_pairs_by_name(tmp_path):
    a, b = SVFModel(tiny_model("llama", seed=0)), SVFModel(tiny_model("llama", seed=1))
    e = a.to_expert("a")
    e.z = {n: torch.full_like(v, 1.0 + i / 10) for i, (n, v) in enumerate(e.z.items())}
    e.z = dict(sorted(e.z.items()))  # an old file in sorted order still pairs correctly
    moved = e.transfer(b)
    for n in b.layers:
        torch.testing.assert_close(moved.z[n], e.z[n])


def test_expert_copy_renames(tmp_path, capsys):
    SVFModel(tiny_model("llama")).to_expert("gsm8k", task="gsm8k").save(tmp_path / "run")
    assert main(["expert", "copy", str(tmp_path / "run"), str(tmp_path / "math"), "--name", "math"]) == 0
    copied = Expert.load(tmp_path / "math")
    assert copied.name == "math" and copied.meta["task"] == "gsm8k"
    assert main(["expert", "copy", str(tmp_path / "run"), str(tmp_path / "math")]) == 2
    assert "already holds an expert" in capsys.readouterr().err
