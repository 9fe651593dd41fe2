"""Experts on the Hub: save_pretrained/from_pretrained round trip, model cards, push (with a fake
HfApi), and offline runs that fail at once with a hint. Nothing here opens a network connection:
the reachability probe is replaced, and huggingface_hub's downloads are refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from transformer_squared import hub
from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert
from transformer_squared.models import DEFAULT_HUB_ID, DEFAULT_MODEL_NAME, hub_base_id, is_default, load_model
from transformer_squared.svf import SVFModel

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """An empty HF cache, a probe that says 'unreachable' unless a test says otherwise, no downloads."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_reachable_cache", {})
    monkeypatch.setattr(hub, "_probe", lambda url, timeout=0: False)


def make_expert(name: str = "mine") -> Expert:
    svf = SVFModel(tiny_model("llama"), targets="mlp")
    with torch.no_grad():
        for p in svf.parameters():
            p.add_(0.01 * torch.randn(p.shape))
    return svf.to_expert(
        name, task="gsm8k", training={"steps": 40, "lr": 0.002, "best_val_accuracy": 0.25, "val_n": 8, "best_step": 20}
    )


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    e = make_expert()
    e.meta["results"] = {"gsm8k test": {"accuracy": 0.05, "n": 100}}
    folder = e.save_pretrained(tmp_path / "mine")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "expert.json", "expert.safetensors"]
    back = Expert.from_pretrained(folder)
    assert list(back.z) == list(e.z)
    for n in e.z:
        assert torch.equal(back.z[n], e.z[n])
    assert back.meta["fingerprint"] == e.meta["fingerprint"]
    assert back.meta["matrix_fingerprints"] == e.meta["matrix_fingerprints"]
    assert back.meta["training"] == e.meta["training"] and back.meta["results"] == e.meta["results"]
    # it applies to the model it was made on, with the strict checks
    svf = SVFModel(tiny_model("llama"), targets="mlp")
    svf.apply(back)


def test_model_card_carries_base_model_fingerprint_training_and_results(tmp_path):
    e = make_expert()
    e.meta["results"] = {"gsm8k test": {"accuracy": 0.05, "n": 100}}
    card = (e.save_pretrained(tmp_path / "mine", repo_id="me/mine") / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformer-squared\n")
    assert "tiny-llama" in card and e.meta["fingerprint"] in card
    assert "| lr | 0.002 |" in card and "| gsm8k test | 5.0% (n=100) |" in card
    assert 't2.Expert.from_pretrained("me/mine")' in card
    # without recorded results the card says the number is the model-selection val accuracy
    e.meta.pop("results")
    card = (e.save_pretrained(tmp_path / "again") / "README.md").read_text()
    assert "Validation accuracy used for model selection: 25.0% on 8 items at step 20 of 40" in card


def test_shipped_experts_name_the_bundled_weights_honestly():
    for name in ("math", "code", "reasoning", "classify"):
        e = Expert.load(REPO / "experts" / name)
        assert e.meta["base_model"] == DEFAULT_MODEL_NAME
        card = hub.model_card(e)
        assert f'base_model: "{DEFAULT_HUB_ID}"' in card and "Q4_1" in card and 'load_model("default")' in card
    assert hub_base_id(DEFAULT_MODEL_NAME) == DEFAULT_HUB_ID
    assert hub_base_id("/some/local/folder") is None


def test_the_hub_id_is_not_the_bundled_model(monkeypatch):
    assert is_default("default") and is_default(DEFAULT_MODEL_NAME)
    assert not is_default(DEFAULT_HUB_ID)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(T2Error, match="not in the local Hugging Face cache"):
        load_model(DEFAULT_HUB_ID)  # the ordinary Hub path, not silently the bundled weights


def test_offline_fails_at_once_with_a_hint(monkeypatch):
    import huggingface_hub

    def refuse(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(T2Error, match="HF_HUB_OFFLINE=1 is set.*local folder"):
        Expert.from_pretrained("someone/an-expert")
    with pytest.raises(T2Error, match="HF_HUB_OFFLINE=1 is set.*local folder"):
        load_model("someone/a-model")
    assert time.perf_counter() - t0 < 5


def test_unreachable_hub_fails_at_once_with_a_hint(monkeypatch):
    probed = []
    monkeypatch.setattr(hub, "_probe", lambda url, timeout=0: probed.append(url) or False)
    t0 = time.perf_counter()
    with pytest.raises(T2Error, match="cannot reach the Hugging Face Hub .*HF_HUB_OFFLINE=1"):
        Expert.from_pretrained("someone/an-expert")
    with pytest.raises(T2Error, match="cannot reach the Hugging Face Hub"):
        load_model("someone/a-model")
    assert time.perf_counter() - t0 < 5
    assert probed == ["https://huggingface.co"]  # probed once per process


def _fake_cache(root: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub uses: models--org--name/{refs/main, snapshots/<rev>/...}."""
    rev = "0" * 40
    base = root / ("models--" + repo_id.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_a_cached_hub_expert_loads_offline(tmp_path, monkeypatch):
    e = make_expert("cached")
    folder = e.save_pretrained(tmp_path / "src")
    _fake_cache(tmp_path / "hf-cache", "someone/cached", {p.name: p.read_bytes() for p in folder.iterdir()})
    for env in ({"HF_HUB_OFFLINE": "1"}, {}):  # offline by choice, and unreachable
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        back = Expert.from_pretrained("someone/cached")
        assert back.meta["fingerprint"] == e.meta["fingerprint"]
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_from_pretrained_refuses_what_is_neither_folder_nor_repo_id(tmp_path):
    with pytest.raises(T2Error, match="neither a folder nor a Hub repo id"):
        Expert.from_pretrained(str(tmp_path / "missing" / "deeper" / "x"))


def test_push_to_hub_uploads_the_folder_with_its_card(monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            calls["create"] = (repo_id, private, exist_ok, repo_type)

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text()
            calls["message"] = commit_message
            return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = make_expert("pushed").push_to_hub("me/pushed", private=True, token="t")
    assert url == "https://hub.example/me/pushed/commit/1"
    assert calls["create"] == ("me/pushed", True, True, "model") and calls["token"] == "t"
    assert calls["files"] == ["README.md", "expert.json", "expert.safetensors"]
    assert 'from_pretrained("me/pushed")' in calls["card"] and "pushed" in calls["message"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(T2Error, match="unset it to push"):
        make_expert().push_to_hub("me/x")
