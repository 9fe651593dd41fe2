"""Experts: save/load round trip, compatibility checks, mixing, per-row experts, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from transformer_squared import Expert, SVFModel, T2Error
from transformer_squared.generation import generate

IDS = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(2))


def make_expert(svf: SVFModel, seed: int, name: str, scale=0.2) -> Expert:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in svf.parameters():
            p.copy_(svf.parameterization.init + torch.randn(p.shape, generator=g) * scale)
    e = svf.to_expert(name, task=name)
    svf.reset()
    return e


def out(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def test_round_trip(tmp_path, arch):
    model = tiny_model(arch)
    svf = SVFModel(model)
    e = make_expert(svf, 1, "math")
    svf.apply(e)
    want = out(model)
    e.save(tmp_path / "math")
    assert sorted(p.name for p in (tmp_path / "math").iterdir()) == ["expert.json", "expert.safetensors"]
    meta = json.loads((tmp_path / "math" / "expert.json").read_text())
    assert meta["fingerprint"] == svf.fingerprint and meta["task"] == "math"
    assert meta["num_parameters"] == svf.num_trainable_parameters()
    svf.reset()
    loaded = Expert.load(tmp_path / "math")
    for n in e.z:
        assert torch.equal(loaded.z[n], e.z[n])
    svf.apply(loaded)
    assert torch.equal(out(model), want)
    assert svf.active is loaded


def test_other_weights_are_refused_naming_the_matrix(tmp_path):
    e = make_expert(SVFModel(tiny_model("llama", seed=0)), 1, "math")
    other = SVFModel(tiny_model("llama", seed=9))
    with pytest.raises(T2Error, match=r"matrix 'model\.layers\.0\.mlp\.gate_proj' differs"):
        other.apply(e)
    other.apply(e, strict=False)  # cross-model transfer when shapes match
    assert torch.equal(other.layers["model.layers.1.mlp.down_proj"].z.detach(), e.z["model.layers.1.mlp.down_proj"])


def test_other_shapes_and_targets_are_refused():
    e = make_expert(SVFModel(tiny_model("llama")), 1, "math")
    gpt = SVFModel(tiny_model("gpt2"))
    with pytest.raises(T2Error, match="has no vector for matrix"):
        gpt.apply(e)
    with pytest.raises(T2Error, match="vectors but the model has"):
        gpt.apply(e, strict=False)
    attn = SVFModel(tiny_model("llama"), targets="attn")
    with pytest.raises(T2Error, match="has no vector"):
        attn.apply(e)
    sig = SVFModel(tiny_model("llama"), parameterization="sigmoid")
    with pytest.raises(T2Error, match="parameterization"):
        sig.apply(e)


def test_bad_files(tmp_path):
    svf = SVFModel(tiny_model("llama"))
    e = make_expert(svf, 1, "math")
    d = e.save(tmp_path / "e")
    with pytest.raises(T2Error, match="does not exist"):
        Expert.load(tmp_path / "nope")
    # truncated weights
    w = d / "expert.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(T2Error, match="truncated"):
        Expert.load(d)
    w.write_bytes(data)
    # hand-edited json: broken, or disagreeing with the weights
    c = d / "expert.json"
    good = c.read_text()
    c.write_text(good[:-10])
    with pytest.raises(T2Error, match="not valid JSON"):
        Expert.load(d)
    meta = json.loads(good)
    meta["shapes"]["model.layers.0.mlp.up_proj"] = 999
    c.write_text(json.dumps(meta))
    with pytest.raises(T2Error, match="should have 999 values"):
        Expert.load(d)
    c.write_text(good)
    (d / "expert.json").unlink()
    with pytest.raises(T2Error, match="missing"):
        Expert.load(d)


def test_nan_is_refused(tmp_path):
    svf = SVFModel(tiny_model("llama"))
    e = make_expert(svf, 1, "math")
    z = dict(e.z)
    z["model.layers.0.mlp.up_proj"] = z["model.layers.0.mlp.up_proj"].clone()
    z["model.layers.0.mlp.up_proj"][0] = float("nan")
    with pytest.raises(T2Error, match="NaN"):
        Expert(z, e.meta)
    # a NaN written into the file directly (bypassing Expert) is refused on load
    from safetensors.torch import save_file

    d = e.save(tmp_path / "e")
    save_file(z, str(d / "expert.safetensors"))
    with pytest.raises(T2Error, match="NaN"):
        Expert.load(d)


def test_save_is_atomic(tmp_path, monkeypatch):
    svf = SVFModel(tiny_model("llama"))
    e = make_expert(svf, 1, "math")
    import transformer_squared.experts as ex

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "save_file", crash)
    with pytest.raises(RuntimeError):
        e.save(tmp_path / "e")
    assert list((tmp_path / "e").iterdir()) == []  # no half-written file left behind


@pytest.mark.parametrize("param", ["direct", "sigmoid"])
def test_mix(param):
    svf = SVFModel(tiny_model("llama"), parameterization=param)
    a, b = make_expert(svf, 1, "a"), make_expert(svf, 2, "b")
    only_a = Expert.mix([a, b], [1.0, 0.0])
    for n in a.z:
        torch.testing.assert_close(only_a.z[n], a.z[n], rtol=1e-4, atol=1e-4)
    half = Expert.mix([a, b], [0.5, 0.5])
    n0 = next(iter(a.z))
    if param == "direct":
        torch.testing.assert_close(half.z[n0], (a.z[n0] + b.z[n0]) / 2)
    else:  # mixed on sigmoid(z), not on raw z
        torch.testing.assert_close(torch.sigmoid(half.z[n0]), (torch.sigmoid(a.z[n0]) + torch.sigmoid(b.z[n0])) / 2)
    per_matrix = torch.zeros(2, len(a.z))
    per_matrix[0, 0] = 1.0
    per_matrix[1, 1:] = 1.0
    pm = Expert.mix([a, b], per_matrix)
    names = list(a.z)
    torch.testing.assert_close(pm.z[names[0]], Expert.mix([a], [1.0]).z[names[0]])
    torch.testing.assert_close(pm.z[names[1]], Expert.mix([b], [1.0]).z[names[1]])
    assert pm.meta["mixture"]["experts"] == ["a", "b"]
    # relative to the base: α = 0 is the identity, and α scales the change, not every singular value
    none = Expert.mix([a, b], [0.0, 0.0])
    double = Expert.mix([a], [2.0])
    if param == "direct":
        torch.testing.assert_close(none.z[n0], torch.ones_like(a.z[n0]))
        torch.testing.assert_close(double.z[n0], 1 + 2 * (a.z[n0] - 1))
        torch.testing.assert_close(Expert.mix([a, b], [0.7, 0.7]).z[n0], 1 + 0.7 * (a.z[n0] - 1) + 0.7 * (b.z[n0] - 1))
    else:
        s0 = torch.sigmoid(torch.tensor(svf.parameterization.init))
        torch.testing.assert_close(torch.sigmoid(none.z[n0]), s0.expand_as(a.z[n0]))
        torch.testing.assert_close(
            torch.sigmoid(double.z[n0]), s0 + 2 * (torch.sigmoid(a.z[n0]) - s0), rtol=1e-4, atol=1e-5
        )
    svf.apply(none)
    ids = torch.randint(0, 50, (1, 6))
    out_none = svf(ids).logits
    with svf.disabled():
        out_base = svf(ids).logits
    torch.testing.assert_close(out_none, out_base, rtol=1e-4, atol=1e-4)
    svf.apply(half)
    with pytest.raises(T2Error, match="shape"):
        Expert.mix([a, b], [1.0, 2.0, 3.0])
    with pytest.raises(T2Error, match="at least one"):
        Expert.mix([], [])


def test_rows_give_each_row_its_own_expert(arch):
    model = tiny_model(arch)
    svf = SVFModel(model)
    a, b = make_expert(svf, 1, "a"), make_expert(svf, 2, "b")
    alone = []
    for e in (a, None, b):
        if e is None:
            with svf.disabled():
                alone.append(out(model)[0])
        else:
            svf.apply(e)
            alone.append(out(model)[0])
            svf.reset()
    ids = IDS[:1].expand(3, -1)
    with svf.rows([a, None, b]):
        mixed = out(model, ids)
    for i in range(3):
        torch.testing.assert_close(mixed[i], alone[i], rtol=1e-4, atol=1e-4)


def test_generate_with_mixed_experts_matches_alone():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 1
    svf = SVFModel(model)
    a, b = make_expert(svf, 1, "a", scale=1.0), make_expert(svf, 2, "b", scale=1.0)
    prompts = ["w5 w6 w7", "w9 w3", "w10 w11 w12 w13"]
    experts = [a, b, None]
    mixed = generate(model, tokenizer, prompts, max_new_tokens=6, svf=svf, experts=experts, batch_size=3)
    for p, e, m in zip(prompts, experts, mixed, strict=True):
        if e is None:
            with svf.disabled():
                alone = generate(model, tokenizer, [p], max_new_tokens=6)[0]
        else:
            svf.apply(e)
            alone = generate(model, tokenizer, [p], max_new_tokens=6)[0]
            svf.reset()
        assert m.token_ids == alone.token_ids
    assert len({tuple(m.token_ids) for m in mixed}) > 1


def test_generate_with_one_shared_expert_uses_it_and_restores_state():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 1
    svf = SVFModel(model)
    a, b = make_expert(svf, 1, "a", scale=1.0), make_expert(svf, 2, "b", scale=1.0)
    prompts = ["w5 w6 w7", "w9 w3"]
    svf.apply(b)  # the caller's current expert must survive the call
    shared = generate(model, tokenizer, prompts, max_new_tokens=5, svf=svf, experts=[a, a])
    assert svf.active is b and all(torch.equal(svf.layers[n].z.detach(), b.z[n]) for n in b.z)
    with svf.rows([a, a]):
        per_row = generate(model, tokenizer, prompts, max_new_tokens=5)
    assert [g.token_ids for g in shared] == [g.token_ids for g in per_row]


def test_one_row_expert_broadcasts_to_the_batch():
    model = tiny_model("llama")
    svf = SVFModel(model)
    a = make_expert(svf, 1, "a")
    svf.apply(a)
    want = out(model)
    svf.reset()
    with svf.rows([a]):
        got = out(model)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    from conftest import tiny_tokenizer

    from transformer_squared.generation import generate

    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 1, 2
    prompts = ["w5 w6 w7", "w8 w9"]
    torch.manual_seed(123)
    want_next = torch.rand(3)
    torch.manual_seed(123)
    a = generate(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=7)
    assert torch.equal(torch.rand(3), want_next)  # the caller's stream is where it was
    b = generate(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=7)
    c = generate(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=8)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    from transformer_squared.fileio import _UMASK, write_text

    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_UMASK


def test_model_name_is_read_in_one_place():
    from transformer_squared.models import model_name

    model = tiny_model("llama")
    model.config._name_or_path = ""
    assert model_name(model) == "" and model_name(model, "fallback") == "fallback"
    model.config._name_or_path = "some/folder"
    assert model_name(model, "fallback") == "some/folder"
    model.t2_model_name = "loaded-name"  # what load_model sets: it wins
    assert model_name(model, "fallback") == "loaded-name"
    assert Expert.from_svf(SVFModel(model), name="x").meta["base_model"] == "loaded-name"
