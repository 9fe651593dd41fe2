"""The cheap first pass: an early-layer probe router (``transformer_squared.probe``)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from transformer_squared import SVFModel, T2Error
from transformer_squared.adapt import AdaptiveModel
from transformer_squared.cli import main
from transformer_squared.probe import (
    ProbeRouter,
    decoder_blocks,
    early_features,
    fit_probe,
    train_probe_router,
)


def _requests(n: int, seed: int) -> list[tuple[str, str]]:
    """Two kinds of request the tiny word-level tokenizer tells apart: low words vs high words."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        lo = i % 2 == 0
        words = torch.randint(5, 30, (6,), generator=g) + (0 if lo else 40)
        out.append((" ".join(f"w{int(w)}" for w in words), "low" if lo else "high"))
    return out


def test_only_the_first_blocks_run_and_features_are_per_text():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    blocks = decoder_blocks(model)
    ran = []
    handles = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(blocks)]
    try:
        x = early_features(model, tok, ["w5 w6 w7", "w8"], layer=1, max_tokens=8)
    finally:
        for h in handles:
            h.remove()
    assert x.shape == (2, model.config.hidden_size)
    assert ran == [0]  # block 1 only; the forward stopped there
    # padding does not change a text's features; truncation to max_tokens does what it says
    alone = early_features(model, tok, ["w8"], layer=1, max_tokens=8)
    assert torch.allclose(x[1], alone[0], atol=1e-5)
    cut = early_features(model, tok, ["w5 w6 w7"], layer=1, max_tokens=1)
    assert torch.allclose(cut[0], early_features(model, tok, ["w5"], layer=1, max_tokens=8)[0], atol=1e-5)
    with pytest.raises(T2Error, match="between 1 and"):
        early_features(model, tok, ["w5"], layer=len(blocks) + 1, max_tokens=8)


def test_fit_probe_separates_separable_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    mean, std, w, b = fit_probe(x, y, 2)
    pred = (((x - mean) / std) @ w.T + b).argmax(-1)
    assert (pred == y).float().mean() >= 0.95


def test_router_trains_saves_loads_and_routes(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    svf = SVFModel(model)
    router, val_acc = train_probe_router(
        model, tok, _requests(40, 0), _requests(20, 1), layers=(1, 2), max_tokens=16, progress=False
    )
    assert set(val_acc) == {1, 2} and router.layer in (1, 2) and router.labels == ["high", "low"]
    assert val_acc[router.layer] >= max(val_acc.values()) - 0.005
    test = _requests(20, 2)
    pred = router.predict(model, tok, [t for t, _ in test])
    assert sum(p == lab for p, (_, lab) in zip(pred, test, strict=True)) >= 18
    again = ProbeRouter.load(router.save(tmp_path / "r"))
    assert torch.allclose(again.probabilities(model, tok, ["w5 w6"]), router.probabilities(model, tok, ["w5 w6"]))
    # the probe strategy: labels from the router, an expert where one has that domain, base otherwise
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in svf.parameters():
            p.copy_(1 + torch.randn(p.shape, generator=g))
    expert = svf.to_expert("e-low", domain="low")
    svf.reset()
    am = AdaptiveModel(svf, tok, [expert], strategy="probe", router=router)
    routes = am.route([t for t, _ in test])
    assert [r.label for r in routes] == pred
    assert all((r.expert is expert) == (r.label == "low") for r in routes)
    assert all(torch.equal(p.detach(), torch.ones_like(p)) for p in svf.parameters())
    # the probe reads the base model even while an expert is applied
    svf.apply(expert)
    assert [r.label for r in am.route([t for t, _ in test])] == pred
    svf.reset()
    with pytest.raises(T2Error, match="needs the early-layer router"):
        AdaptiveModel(svf, tok, [expert], strategy="probe")
    with pytest.raises(T2Error, match="not a router folder"):
        ProbeRouter.load(tmp_path)


def test_train_router_cli_refuses_bad_options(capsys):
    assert main(["train-router", "--out", "x", "--layers", "a,b"]) == 2
    assert "--layers must be comma-separated integers" in capsys.readouterr().err
    assert main(["train-router", "--out", "x", "--labels", "math"]) == 2
    assert "label=task pairs" in capsys.readouterr().err


def test_generate_routes_with_the_probe(tiny_model_dir, tmp_path, capsys):
    from transformer_squared import load_model

    model, tok = load_model(str(tiny_model_dir), progress=False)
    svf = SVFModel(model)
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(0.5)
    svf.to_expert("e-low", domain="low").save(tmp_path / "low")
    svf.reset()
    router, _ = train_probe_router(
        model, tok, _requests(20, 0), _requests(10, 1), layers=(1,), max_tokens=8, progress=False
    )
    router.save(tmp_path / "router")
    argv = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--experts",
        str(tmp_path / "low"),
        "--adapt",
        "probe",
        "--router",
        str(tmp_path / "router"),
        "--max-new-tokens",
        "2",
        "w5 w6 w7",
        "w50 w60 w70",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("[route: ") == 2 and ("low -> e-low" in out or "high -> base" in out)
