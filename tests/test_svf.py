"""SVF core: exact identity at init, merged == factored == the SVD definition, exact gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from transformer_squared import SVFModel, T2Error
from transformer_squared.svf import Parameterization, SVFLinear

IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def randomize(svf: SVFModel, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("param", ["direct", "sigmoid"])
@pytest.mark.parametrize("path", ["merged", "factored"])
def test_identity_at_init(arch, param, path):
    model = tiny_model(arch)
    base = logits(model)
    SVFModel(model, targets="all-linear", parameterization=param, path=path)
    assert (logits(model) - base).abs().max().item() <= 1e-5


def test_direct_identity_is_bit_exact(arch):
    model = tiny_model(arch)
    base = logits(model)
    svf = SVFModel(model)
    assert torch.equal(logits(model), base)
    svf.path = "factored"
    assert torch.equal(logits(model), base)


@pytest.mark.parametrize("param", ["direct", "sigmoid"])
def test_merged_equals_factored(arch, param):
    model = tiny_model(arch)
    svf = SVFModel(model, targets="all-linear", parameterization=param)
    randomize(svf)
    merged = logits(model)
    svf.path = "factored"
    factored = logits(model)
    assert (merged - logits(tiny_model(arch))).abs().max() > 1e-3  # z really changed the model
    torch.testing.assert_close(factored, merged, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("param", ["direct", "sigmoid"])
def test_matches_svd_definition(arch, param):
    """W' equals U diag(σ ⊙ g(z)) Vᵀ computed naively from a fresh SVD."""
    model = tiny_model(arch)
    svf = SVFModel(model, targets="all-linear", parameterization=param)
    randomize(svf)
    for layer in svf.layers.values():
        w = layer.base_weight().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        z = layer.z.detach().double()
        if param == "direct":
            g = z
        else:
            m = torch.sigmoid(z)
            g = m * s.sum() / (s * m).sum()
        # the singular vectors of the cached factor may differ in sign: compare W' itself,
        # using the layer's own σ ordering (identical up to float error)
        expected = (u * (s * g)) @ vh
        got = layer.merged_weight().double()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _to_float64_factors(svf):
    """Recompute the factors in float64 so a finite-difference check can be tight."""
    from transformer_squared.svf import compute_svd

    for layer in svf.layers.values():
        u, s, vh = torch.linalg.svd(layer.base_weight().double(), full_matrices=False)
        layer.sigma = s
        layer.q = vh.t().contiguous() if layer.side == "in" else u.contiguous()
        layer.z.data = layer.z.data.double()
    assert compute_svd  # the float32 factors it replaces come from here


def _check_finite_differences(svf, loss, per_layer=3, tol=1e-7):
    for p in svf.parameters():
        p.grad = None
    loss().backward()
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for name, z in svf.named_parameters():
        assert z.grad is not None and torch.isfinite(z.grad).all(), name
        for i in torch.randint(0, z.numel(), (per_layer,), generator=gen).tolist():
            eps = 1e-6
            with torch.no_grad():
                z[i] += eps
                up = loss().item()
                z[i] -= 2 * eps
                down = loss().item()
                z[i] += eps
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - z.grad[i].item()) <= tol * max(1.0, abs(numeric)), (name, i, numeric, z.grad[i])
            checked += 1
    return checked


@pytest.mark.parametrize("path", ["merged", "factored"])
@pytest.mark.parametrize("param", ["direct", "sigmoid"])
def test_gradients_match_finite_differences_whole_model(path, param):
    """Whole GPT-2 (Conv1D, LayerNorm: all float64) against central differences."""
    model = tiny_model("gpt2", dtype=torch.float64)
    svf = SVFModel(model, targets="all-linear", parameterization=param, path=path, cache=False)
    _to_float64_factors(svf)
    randomize(svf, scale=0.1)
    ids = IDS[:1]
    target = torch.randn(1, ids.shape[1], 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    n = _check_finite_differences(svf, lambda: (model(ids).logits * target).sum())
    assert n == 3 * len(svf.layers)


@pytest.mark.parametrize("path", ["merged", "factored"])
@pytest.mark.parametrize("param", ["direct", "sigmoid"])
@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])  # both sides: square V and square U
def test_gradients_match_finite_differences_linear(path, param, shape):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(*shape), torch.nn.Tanh(), torch.nn.Linear(shape[1], 3)).double()
    svf = SVFModel(net, targets=["0", "2"], parameterization=param, path=path, cache=False)
    _to_float64_factors(svf)
    randomize(svf, scale=0.3)
    x = torch.randn(4, shape[0], dtype=torch.float64)
    assert {layer.side for layer in svf.layers.values()} == ({"in", "out"} if shape[0] < shape[1] else {"out"})
    _check_finite_differences(svf, lambda: (net(x) ** 2).sum(), per_layer=4)


def test_factored_path_builds_no_dense_weight_gradient():
    model = tiny_model("llama")
    svf = SVFModel(model, path="factored")
    model(IDS).logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith(".z"))
    assert all(layer.z.grad is not None for layer in svf.layers.values())
    assert all(layer._merged is None for layer in svf.layers.values())


def test_trainable_parameters_and_freezing(arch):
    model = tiny_model(arch)
    svf = SVFModel(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".z") for n in trainable)
    expected = sum(min(layer.in_features, layer.out_features) for layer in svf.layers.values())
    assert svf.num_trainable_parameters() == expected
    assert len(svf.layers) == (2 * 3 if arch != "gpt2" else 2 * 2)


def test_targets_presets_and_regex(arch):
    attn = SVFModel(tiny_model(arch), targets="attn")
    assert attn.layers and all("attn" in n for n in attn.layers)
    allin = SVFModel(tiny_model(arch), targets="all-linear")
    mlp = SVFModel(tiny_model(arch), targets="mlp")
    assert set(mlp.layers) | set(attn.layers) == set(allin.layers)
    assert not any("lm_head" in n for n in allin.layers)
    rx = SVFModel(tiny_model("llama"), targets=[r"model\.layers\.0\.mlp\.(up|down)_proj"])
    assert list(rx.layers) == ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    by_leaf = SVFModel(tiny_model("llama"), targets=["gate_proj"])
    assert len(by_leaf.layers) == 2


def test_bad_targets_are_clear_errors():
    with pytest.raises(T2Error, match="matched no module"):
        SVFModel(tiny_model("llama"), targets=["nothing_like_this"])
    with pytest.raises(T2Error, match="supports torch.nn.Linear and transformers Conv1D only"):
        SVFModel(tiny_model("llama"), targets=[r"model\.layers\.0\.input_layernorm"])
    with pytest.raises(T2Error, match="not a valid regex"):
        SVFModel(tiny_model("llama"), targets=["(unclosed"])
    with pytest.raises(T2Error, match="unknown parameterization"):
        SVFModel(tiny_model("llama"), parameterization="cubic")
    with pytest.raises(T2Error, match="matched no linear layer"):
        SVFModel(torch.nn.Sequential(torch.nn.Embedding(3, 3)), targets="mlp")
    model = tiny_model("llama")
    SVFModel(model)
    with pytest.raises(T2Error, match="already wrapped"):
        SVFModel(model)


def test_disabled_and_reset_restore_the_base():
    model = tiny_model("llama")
    base = logits(model)
    svf = SVFModel(model)
    randomize(svf)
    adapted = logits(model)
    assert (adapted - base).abs().max() > 1e-3
    with svf.disabled():
        assert torch.equal(logits(model), base)
    torch.testing.assert_close(logits(model), adapted)
    svf.reset()
    assert torch.equal(logits(model), base)


def test_merged_cache_follows_z_changes():
    model = tiny_model("llama")
    svf = SVFModel(model)
    first = logits(model)
    randomize(svf)
    second = logits(model)
    assert (first - second).abs().max() > 1e-3  # the cached W' was rebuilt after z changed
    svf.reset()
    assert torch.equal(logits(model), first)


def test_svd_cache_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path / "own-cache"))  # not the session's shared cache
    model = tiny_model("llama")
    SVFModel(model)  # fills the cache
    import transformer_squared.svf.decompose as svf_mod  # where SVFModel takes the SVD

    def boom(*a, **k):
        raise AssertionError("SVD recomputed although cached")

    monkeypatch.setattr(svf_mod, "compute_svd", boom)
    second = tiny_model("llama")
    svf = SVFModel(second)  # same weights, same fingerprint: read from disk
    assert len(svf.layers) == 6
    other = tiny_model("llama", seed=7)  # other weights: a cache miss must recompute
    with pytest.raises(AssertionError, match="recomputed"):
        SVFModel(other)


def test_unwrap_restores_modules(arch):
    model = tiny_model(arch)
    base = logits(model)
    keys = set(model.state_dict())
    svf = SVFModel(model)
    assert {k for k in model.state_dict() if not k.endswith(".z")} == keys
    randomize(svf)
    svf.unwrap()
    assert not any(isinstance(m, SVFLinear) for m in model.modules())
    assert torch.equal(logits(model), base)


def test_parameterization_values():
    p = Parameterization("sigmoid", max_mult=2.0)
    sigma = torch.tensor([3.0, 2.0, 1.0])
    g = p.multiplier(torch.tensor([0.0, 1.0, -1.0]), sigma)
    assert torch.isclose((g * sigma).sum(), sigma.sum())  # Σσ preserved
    assert Parameterization("direct").init == 1.0 and Parameterization("sigmoid").init == 0.1
    with pytest.raises(T2Error):
        Parameterization("direct", max_mult=0)


@pytest.mark.slow
def test_default_model_has_51840_parameters_and_exact_identity(default_model):
    model, tokenizer = default_model
    ids = tokenizer(["The capital of France is"], return_tensors="pt").input_ids
    base = logits(model, ids)
    svf = SVFModel(model, targets="mlp")
    assert svf.num_trainable_parameters() == 51_840 == 30 * 3 * 576
    assert (logits(model, ids) - base).abs().max().item() <= 1e-5
    randomize(svf, scale=0.05)
    merged = logits(model, ids)
    svf.path = "factored"
    torch.testing.assert_close(logits(model, ids), merged, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------
# Weight state: only SVFModel writes z (applied / load_state / weights_for / merged_state_dict)
# ---------------------------------------------------------------------------------------
def _two_experts(svf: SVFModel):
    experts = []
    for seed in (1, 2):
        svf.reset()
        randomize(svf, seed=seed)
        experts.append(svf.to_expert(f"e{seed}"))
    svf.reset()
    return experts


def test_applied_restores_the_previous_z_and_active():
    model = tiny_model("llama")
    svf = SVFModel(model, cache=False)
    a, b = _two_experts(svf)
    svf.apply(a)
    with_a = logits(model)
    with svf.applied(b):
        assert svf.active is b
        assert not torch.equal(logits(model), with_a)
    assert svf.active is a
    assert torch.equal(logits(model), with_a)
    with pytest.raises(RuntimeError), svf.applied(b):  # restored after an error too
        raise RuntimeError
    assert svf.active is a and all(torch.equal(svf.state()[n], a.z[n]) for n in svf.layers)


def test_load_state_round_trip_and_mismatch():
    model = tiny_model("llama")
    svf = SVFModel(model, cache=False)
    a, _ = _two_experts(svf)
    svf.apply(a)
    snapshot, want = svf.state(), logits(model)
    svf.reset()
    svf.load_state(snapshot)
    assert torch.equal(logits(model), want)
    assert svf.active is None  # load_state does not claim an expert
    with pytest.raises(T2Error, match="do not match"):
        svf.load_state({"nope": torch.ones(3)})


def test_weights_for_base_merged_and_per_row():
    model = tiny_model("llama")
    svf = SVFModel(model, cache=False)
    a, b = _two_experts(svf)
    ids = IDS[:1].repeat(3, 1)
    base = logits(model, ids)
    with svf.weights_for([None, None, None]):
        assert torch.equal(logits(model, ids), base)
    svf.apply(a)
    with_a = logits(model, ids)
    svf.reset()
    with svf.weights_for([a, a, a]):  # one expert for every row: merged (applied), z restored after
        assert svf.active is a
        assert torch.equal(logits(model, ids), with_a)
    assert svf.active is None and torch.equal(logits(model, ids), base)
    with svf.applied(b):
        with_b = logits(model, ids)
    with svf.weights_for([a, None, b]):  # a mixed batch: one multiplier per row
        mixed = logits(model, ids)
    torch.testing.assert_close(mixed[0], with_a[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[1], base[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[2], with_b[2], rtol=1e-4, atol=1e-4)
    assert all(layer.row_g is None for layer in svf.layers.values())


@pytest.mark.parametrize("arch_", ["llama", "gpt2"])
def test_merged_state_dict_loads_into_the_plain_model(arch_):
    model = tiny_model(arch_)
    svf = SVFModel(model, cache=False)
    a, b = _two_experts(svf)
    weights = {n: layer.weight.detach().clone() for n, layer in svf.layers.items()}
    svf.apply(b)
    state = svf.merged_state_dict(a)
    assert svf.active is b  # the model is as it was: z of b, base weights untouched
    assert all(torch.equal(layer.weight, weights[n]) for n, layer in svf.layers.items())
    assert not any(k.endswith(".z") for k in state)
    with svf.applied(a):
        want = logits(model)
    plain = tiny_model(arch_)
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state)
    torch.testing.assert_close(logits(plain), want, rtol=1e-4, atol=1e-4)
    current = svf.merged_state_dict()  # no expert: the current z (b)
    plain.load_state_dict(current)
    torch.testing.assert_close(logits(plain), logits(model), rtol=1e-4, atol=1e-4)


def test_from_expert_wraps_a_model_the_way_the_expert_was_made():
    svf = SVFModel(tiny_model("llama"), targets="attn", parameterization="sigmoid")
    expert = svf.to_expert("e")
    again = SVFModel.from_expert(tiny_model("llama"), expert)
    assert list(again.layers) == list(svf.layers)
    assert again.parameterization.kind == "sigmoid" and again.parameterization.init == svf.parameterization.init
    again.apply(expert)  # strict: same matrices, same shapes


def _autocast_pass(model, svf):
    """Logits and the z gradient of one bf16-autocast forward and backward."""
    for p in svf.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(IDS).logits
    out.float().square().mean().backward()
    return out.detach(), torch.cat([p.grad.reshape(-1) for p in svf.parameters()])


@pytest.mark.parametrize("path", ["merged", "factored"])
def test_autocast_copies_of_frozen_tensors_change_nothing(arch, path, monkeypatch):
    """Under autocast a layer casts q, its base weight and the cached W' once; the results are autocast's own, bit for bit."""
    model = tiny_model(arch)
    svf = SVFModel(model, targets="all-linear", path=path)
    randomize(svf, scale=0.05)
    kept = _autocast_pass(model, svf)
    layer = next(m for m in model.modules() if isinstance(m, SVFLinear))
    with torch.no_grad():  # the no-grad forward is the one that reuses W' (merged) or the factors (factored)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            again = model(IDS).logits
    copies = {name: held[2] for name, held in layer._casts.items()}
    assert copies and all(c.dtype == torch.bfloat16 for c in copies.values())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(IDS)
    assert all(layer._casts[name][2] is c for name, c in copies.items())  # made once, then reused
    with monkeypatch.context() as m:  # the layer as it was: autocast casts every operand at every call
        m.setattr(SVFLinear, "_autocast_copy", lambda self, name, t, x: t)
        plain = _autocast_pass(model, svf)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            plain_again = model(IDS).logits
    assert torch.equal(kept[0], plain[0]) and torch.equal(kept[1], plain[1])
    assert torch.equal(again, plain_again)
    with torch.no_grad():  # a changed tensor makes a fresh copy (W' follows z; the factors' path reads the weight)
        (layer.z if path == "merged" else layer.weight).mul_(1.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            changed = model(IDS).logits
    assert not torch.equal(changed, again)
    with monkeypatch.context() as m, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m.setattr(SVFLinear, "_autocast_copy", lambda self, name, t, x: t)
        assert torch.equal(model(IDS).logits, changed)
    assert torch.equal(logits(model), logits(model))  # outside autocast nothing is cast
    assert all(held[2].dtype == torch.bfloat16 for held in layer._casts.values())


def test_autocast_with_a_model_casts_frozen_linear_weights_once():
    """``models.autocast(..., model)`` swaps frozen float32 Linear weights for bf16 copies: same results, originals restored."""
    from transformer_squared.models import autocast

    model = tiny_model("llama")
    svf = SVFModel(model, path="factored")  # the MLP is SVF's; attention and lm_head are plain Linear
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    trained = model.model.layers[0].self_attn.o_proj.weight
    trained.requires_grad_(True)  # a weight that trains (as LoRA's would) is never swapped
    originals = {n: p for n, p in model.named_parameters()}
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))

    def run(ctx):
        for p in model.parameters():
            p.grad = None
        with ctx:
            dtypes = {n: p.dtype for n, p in model.named_parameters(remove_duplicate=False)}
            out = model(ids).logits
            model_dtype = model.dtype
        out.float().square().mean().backward()  # after the block: autograd kept what the forward used
        grads = [p.grad.clone() for p in (*svf.parameters(), trained)]
        return out.detach(), grads, dtypes, model_dtype

    plain = run(autocast("bf16", "cpu"))
    kept = run(autocast("bf16", "cpu", model))
    assert torch.equal(plain[0], kept[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], kept[1], strict=True))
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert plain[2][q_proj] == torch.float32 and kept[2][q_proj] == torch.bfloat16
    assert kept[2]["model.layers.0.self_attn.o_proj.weight"] == torch.float32  # trains: left alone
    assert kept[2]["model.layers.0.mlp.up_proj.weight"] == torch.float32  # SVF layers cast their own
    assert kept[3] == torch.float32  # model.dtype (the embedding, its first parameter) unchanged
    assert {n: p for n, p in model.named_parameters()} == originals  # the very same Parameters are back
    cast = model.model.layers[0].self_attn.q_proj.__dict__["_t2_frozen_casts"]["weight"][2]
    run(autocast("bf16", "cpu", model))
    assert model.model.layers[0].self_attn.q_proj.__dict__["_t2_frozen_casts"]["weight"][2] is cast  # made once
    assert autocast("none", "cpu", model).__class__.__name__ == "nullcontext"


def test_autocast_copies_survive_path_switches_and_inference_mode():
    """The trainer switches paths around every micro-batch: q and the base weight stay cast; inference mode still runs."""
    model = tiny_model("llama")
    svf = SVFModel(model, path="factored")
    randomize(svf, scale=0.05)
    layer = next(m for m in model.modules() if isinstance(m, SVFLinear))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(IDS)
    kept = {name: held[2] for name, held in layer._casts.items()}
    assert set(kept) == {"q", "weight"}
    svf.path = "merged"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        merged = model(IDS).logits
    assert "merged" in layer._casts
    with svf.use_path("factored"):  # drops W' and its copy, not the frozen factors' copies
        assert "merged" not in layer._casts
        assert all(layer._casts[name][2] is c for name, c in kept.items())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(IDS).logits, merged)


def test_frozen_linear_casts_follow_in_place_changes_and_devices():
    from transformer_squared.models import autocast, frozen_linear_casts

    model = tiny_model("llama").requires_grad_(False)  # frozen, as under an adapter
    proj = model.model.layers[0].self_attn.q_proj
    ctx = autocast("bf16", "cpu", model)  # made, not entered: nothing is swapped yet
    assert proj.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with ctx:
        assert proj.weight.dtype == torch.bfloat16
        before = model(IDS).logits
    with torch.no_grad():
        proj.weight.mul_(1.5)
    with autocast("bf16", "cpu", model):
        after = model(IDS).logits
    with autocast("bf16", "cpu"):  # plain autocast on the changed weight
        plain = model(IDS).logits
    assert not torch.equal(after, before) and torch.equal(after, plain)
    with frozen_linear_casts(model, torch.bfloat16, "cuda"):  # weights on another device are left alone
        assert proj.weight.dtype == torch.float32


@pytest.mark.parametrize("arch_", ["llama", "gpt2"])
def test_keep_last_gives_the_int_slices_logits(arch_):
    from transformer_squared.scoring import keep_last

    model = tiny_model(arch_)
    with torch.no_grad():
        for n in (1, 3):
            by_int = model(IDS, logits_to_keep=n).logits
            by_index = model(IDS, logits_to_keep=keep_last(n, IDS.shape[1], "cpu")).logits
            assert by_index.shape == by_int.shape == (IDS.shape[0], n, 128)
            torch.testing.assert_close(by_index, by_int, rtol=1e-5, atol=1e-5)
