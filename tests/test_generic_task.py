"""The generic task (your own data and reward): reading, splits, checks, reward functions, CLI errors, identity.

Everything is local: small files written here, tiny random models; no hub.
"""

from __future__ import annotations

import json
import random
import sys
import textwrap

import pytest
from conftest import tiny_model, tiny_tokenizer

import transformer_squared as t2
from transformer_squared import Expert, SVFModel
from transformer_squared.cli import main
from transformer_squared.errors import T2Error
from transformer_squared.tasks import TaskProtocol, get_task
from transformer_squared.tasks.generic import (
    GenericChoiceTask,
    RewardTask,
    free_text_answer,
    load_reward,
    normalize_answer,
)

QA = [(f"What is the capital of land {i}?", f"City {i}") for i in range(50)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def qa_file(tmp_path):
    return write_jsonl(tmp_path / "capitals.jsonl", [{"q": q, "a": a} for q, a in QA])


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "myreward.py"
    path.write_text(
        textwrap.dedent("""
        def reward(completions, a, **columns):
            return [1.0 if gold.lower() in c.lower() else 0.0 for c, gold in zip(completions, a)]

        def raises(completions, **columns):
            raise ValueError("boom\\nsecond line")

        def short(completions, **columns):
            return [1.0] * (len(completions) - 1)

        def words(completions, **columns):
            return ["yes" for _ in completions]

        def picky(completions, a):  # no **kwargs: gets only what it names
            return [float(len(c) > 3) for c in completions]

        NOT_A_FUNCTION = 3
    """)
    )
    return path


# --------------------------------------------------------------------------- reading and splits


def test_jsonl_default_split_is_mostly_train_and_stable(qa_file, tmp_path):
    task = get_task("generic", source=qa_file, prompt_field="q", answer_field="a")
    assert task.name == task.domain == "capitals"  # the file's stem
    sizes = {s: len(task.load(s)) for s in task.splits()}
    assert sizes == {"train": 40, "val": 5, "test": 5}
    ids = {s: {it.id for it in task.load(s)} for s in task.splits()}
    assert not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    # same split with another domain label, and adding records does not move the old ones
    again = get_task("generic", source=qa_file, prompt_field="q", answer_field="a", domain="geo")
    assert {it.id for it in again.load("test")} == ids["test"] and again.name == "geo"
    more = write_jsonl(
        tmp_path / "more.jsonl",
        [{"q": q, "a": a} for q, a in QA] + [{"q": f"Extra question {i}?", "a": "x"} for i in range(10)],
    )
    bigger = get_task("generic", source=more, prompt_field="q", answer_field="a")
    for split in ("train", "val", "test"):
        old_now = {it.id for it in bigger.load(split)} & set().union(*ids.values())
        assert old_now <= ids[split]
    custom = get_task(
        "generic", source=qa_file, prompt_field="q", answer_field="a", val_fraction=0.2, test_fraction=0.0
    )
    assert {s: len(custom.load(s)) for s in custom.splits()} == {"train": 40, "val": 10}


def test_split_column_csv_json_list_and_dataset(tmp_path):
    rows = [{"q": f"question {i}", "a": str(i), "split": ["train", "validation", "test"][i % 3]} for i in range(9)]
    task = get_task("generic", source=write_jsonl(tmp_path / "s.jsonl", rows), prompt_field="q", answer_field="a")
    assert {s: len(task.load(s)) for s in task.splits()} == {"train": 3, "val": 3, "test": 3}

    csv = tmp_path / "t.csv"
    csv.write_text("question,answer\n" + "".join(f'"what is {i}, really?",{i}\n' for i in range(10)))
    task = get_task("generic", source=csv, prompt_field="question", check="numeric")
    assert sum(len(task.load(s)) for s in task.splits()) == 10
    item = task.load("train")[0]
    assert item.question.startswith("what is") and task.is_correct(item, f"The answer is {item.answer}.")

    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"prompt": f"p{i}", "answer": "x"} for i in range(5)]))
    assert len(get_task("generic", source=arr).load("train")) == 3

    listed = get_task("generic", source=[{"prompt": f"p{i}", "answer": "x"} for i in range(10)], domain="mine")
    assert listed.source.kind == "python" and listed.name == "mine"

    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"prompt": f"p{i}", "answer": f"a{i}"} for i in range(20)])
    assert len(get_task("generic", source=ds).load("train")) == 16
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(3))})
    by_split = get_task("generic", source=dd)
    assert set(by_split.splits()) == {"train", "val", "test"} and len(by_split.load("test")) == 3


def test_conversational_prompts_instruction_and_template(tmp_path):
    rows = [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "w5 w6"}], "answer": "w7"}
    ] * 1 + [{"prompt": [{"role": "user", "content": f"w{i}"}], "answer": "w7"} for i in range(8, 12)]
    task = get_task("generic", source=rows, instruction="w9")
    item = next(it for it in task.load("train") + task.load("val") + task.load("test") if "w5" in it.question)
    assert task.messages(item)[0]["content"] == "Be brief." and task.messages(item)[1]["content"] == "w9\n\nw5 w6"
    templ = get_task(
        "generic",
        source=[{"q": "w5", "hint": "w6", "answer": "w7"}] * 1,
        template="{q} and {hint}",
        val_fraction=0,
        test_fraction=0,
    )
    item = templ.load("train")[0]
    assert item.question == "w5 and w6"
    assert templ.prompt(item, tiny_tokenizer()) == "w3 w5 and w6 w4 "
    raw = get_task("generic", source=[{"prompt": "w5", "answer": "w7"}], chat=False, val_fraction=0, test_fraction=0)
    assert raw.prompt(raw.load("train")[0], tiny_tokenizer()) == "w5"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        (None, ".jsonl", "does not exist"),
        ('{"q": "x", "a": "y"}\nnot json\n', ".jsonl", "line 2 is not valid JSON"),
        ("", ".jsonl", "holds no records"),
        ("[1, 2]\n", ".jsonl", "not an object"),
        ("q,a\n", ".csv", "header but no rows"),
        ("whatever", ".txt", "unknown file type"),
        ('{"q": "x", "a": "y"}\n{"a": "z"}\n', ".jsonl", r"line 2: missing prompt field 'q'"),
        ('{"q": "x", "a": "y"}\n{"q": "z"}\n', ".jsonl", r"line 2: missing answer field 'a'"),
        ('{"q": "x", "a": "y", "split": "train"}\n{"q": "z", "a": "w"}\n', ".jsonl", "no 'split' field"),
        ('{"q": "x", "a": "y", "split": "dev2"}\n', ".jsonl", "'dev2' is not one of"),
        ('{"q": "x", "a": "y"}\n{"q": "x", "a": "z"}\n', ".jsonl", "duplicate id"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    if content is not None:
        path.write_text(content)
    with pytest.raises(T2Error, match=message) as exc:
        get_task("generic", source=path, prompt_field="q", answer_field="a").splits()
    assert "\n" not in str(exc.value)


def test_bad_options():
    rows = [{"prompt": "p", "answer": "a"}]
    for kwargs, message in [
        ({"check": "fuzzy"}, "--check 'fuzzy'"),
        ({"domain": "others"}, "reserved"),
        ({"domain": "two words"}, "routing label"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "nothing to train"),
        ({"color": "red"}, "unexpected keyword argument 'color'"),
    ]:
        with pytest.raises(T2Error, match=message):
            get_task("generic", source=rows, **kwargs)
    with pytest.raises(T2Error, match="needs data"):
        get_task("generic")
    with pytest.raises(T2Error, match="too few"):
        get_task(
            "generic",
            source=[{"prompt": f"p{i}", "answer": "a"} for i in range(4)],
            val_fraction=0.45,
            test_fraction=0.45,
        ).splits()


# --------------------------------------------------------------------------- checks


def test_checks():
    rows = [{"prompt": "Where is the Eiffel tower?", "answer": ["Paris", "Paris, France"]}]
    norm = get_task("generic", source=rows, val_fraction=0, test_fraction=0)
    item = norm.load("train")[0]
    assert norm.is_correct(item, "paris.") and norm.is_correct(item, "The answer is: PARIS, france\nmore text")
    assert not norm.is_correct(item, "I think it is in Lyon") and not norm.is_correct(item, "")
    exact = get_task("generic", source=rows, check="exact", val_fraction=0, test_fraction=0)
    assert exact.is_correct(item, " Paris\n") and not exact.is_correct(item, "paris")
    nums = get_task(
        "generic", source=[{"prompt": "p", "answer": "1,000"}], check="numeric", val_fraction=0, test_fraction=0
    )
    assert nums.is_correct(nums.load("train")[0], "so the total is 1000.0") and nums.extract("x 7") == "7"
    assert normalize_answer("  The Eiffel-Tower. ") == "eiffel tower" and normalize_answer("Bogotá") == "bogota"
    assert free_text_answer("Well.\nFinal answer: Lima") == "Lima" and free_text_answer("") is None


def test_choice_check_letter_index_text_and_loglik_requests():
    rows = [
        {"prompt": "Which is a fruit?", "choices": ["stone", "apple", "car"], "answer": "B"},
        {"prompt": "Which is a colour?", "choices": ["red", "dog", "cup"], "answer": 0},
        {"prompt": "Which swims?", "choices": ["cat", "fish"], "answer": "fish"},
    ]
    task = get_task("generic", source=rows, check="choice", val_fraction=0, test_fraction=0)
    assert isinstance(task, GenericChoiceTask)
    items = {it.question.split("\n")[0]: it for it in task.load("train")}
    assert [items[k].answer for k in ("Which is a fruit?", "Which is a colour?", "Which swims?")] == ["B", "A", "B"]
    fruit = items["Which is a fruit?"]
    assert task.is_correct(fruit, "The answer is B") and task.is_correct(fruit, "apple")
    assert not task.is_correct(fruit, "A") and task.gold_index(fruit) == 1
    assert task.requests(fruit, "cloze")[1] == ("Question: Which is a fruit?\nAnswer:", " apple")
    with pytest.raises(T2Error, match="not a letter"):
        get_task("generic", source=[{"prompt": "p", "choices": ["a", "b"], "answer": "zebra"}], check="choice").splits()


# --------------------------------------------------------------------------- reward functions


def test_reward_function_gets_trl_style_columns(qa_file, reward_file):
    task = get_task("generic", source=qa_file, prompt_field="q", answer_field="a", reward=f"{reward_file}:reward")
    assert isinstance(task, RewardTask) and isinstance(task, TaskProtocol)
    items = task.load("train")[:3]
    assert task.rewards(items, [items[0].answer, "nope", items[2].answer.upper()]) == [1.0, 0.0, 1.0]
    assert task.correct_many(items, [items[0].answer, "nope", "x"]) == [True, False, False]
    seen = {}

    def spy(completions, **columns):
        seen.update(columns)
        return [0.5] * len(completions)

    spied = get_task("generic", source=qa_file, prompt_field="q", answer_field="a", reward=spy)
    spied.rewards(items, ["a", "b", "c"])
    assert seen["a"] == [it.answer for it in items] and seen["prompts"] == seen["q"]
    picky = get_task("generic", source=qa_file, prompt_field="q", answer_field="a", reward=f"{reward_file}:picky")
    assert picky.rewards(items, ["abcd", "a", "abcdef"]) == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "fn,message",
    [
        ("raises", r"reward .*raises raised ValueError: boom second line"),
        ("short", "returned 2 values for 3 completions"),
        ("words", "returned 'yes' for completion 0; rewards must be numbers"),
    ],
)
def test_broken_rewards_are_one_line_errors(qa_file, reward_file, fn, message):
    task = get_task("generic", source=qa_file, prompt_field="q", answer_field="a", reward=f"{reward_file}:{fn}")
    items = task.load("train")[:3]
    with pytest.raises(T2Error, match=message) as exc:
        task.rewards(items, ["a", "b", "c"])
    assert "\n" not in str(exc.value)
    with pytest.raises(T2Error, match=message.split(" ")[0]):
        task.check_reward()


def test_inside_training_a_raising_reward_scores_reward_wrong(qa_file):
    from transformer_squared.training import safe_rewards

    def flaky(completions, **columns):
        if any("bad" in c for c in completions):
            raise RuntimeError("cannot score")
        return [1.0] * len(completions)

    task = get_task("generic", source=qa_file, prompt_field="q", answer_field="a", reward=flaky, reward_wrong=-0.5)
    items = task.load("train")[:3]
    rewards, errors = safe_rewards(task, items, ["ok", "bad", "ok"])
    assert rewards == [1.0, -0.5, 1.0] and errors[0]["index"] == 1 and "cannot score" in errors[0]["error"]


def test_load_reward_specs(tmp_path, reward_file, monkeypatch):
    (tmp_path / "pkg_rewards_t2.py").write_text("def score(completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    assert load_reward("pkg_rewards_t2:score")(["a"]) == [0.0]
    sys.modules.pop("pkg_rewards_t2", None)
    for spec, message in [
        ("nocolon", "MODULE:FUNCTION"),
        ("no_such_module_t2:f", "no module 'no_such_module_t2'"),
        (f"{reward_file}:missing", "has no attribute 'missing'"),
        (f"{reward_file}:NOT_A_FUNCTION", "not a function"),
        ("missing_dir/x.py:f", "does not exist"),
    ]:
        with pytest.raises(T2Error, match=message):
            load_reward(spec)


# --------------------------------------------------------------------------- identity and routing


def test_duplicate_domains_are_refused_when_routing(tmp_path):
    from transformer_squared.adapt import AdaptiveModel, expert_domain

    svf = SVFModel(tiny_model("llama"), targets="mlp", progress=False)
    a = svf.to_expert("geo-a", task="geo", domain="geo")
    b = svf.to_expert("geo-b", task="geo2", domain="geo")
    assert expert_domain(a) == "geo"
    with pytest.raises(T2Error, match="two experts claim the domain 'geo'"):
        AdaptiveModel(svf, tiny_tokenizer(), [a, b], strategy="prompt")
    from transformer_squared.tasks.generic import check_domain

    assert "shipped expert" in check_domain("math") and check_domain("geo") is None


def test_train_and_eval_from_python_on_a_tiny_model(qa_file, reward_file, tmp_path, one_thread):
    tok = tiny_tokenizer()
    model = tiny_model("llama")
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 1, 2
    # the tiny vocabulary only knows w0..w127: a task it can read
    rng = random.Random(0)
    rows = [
        {"q": " ".join(f"w{rng.randrange(5, 128)}" for _ in range(3)), "a": f"w{rng.randrange(5, 128)}"}
        for _ in range(20)
    ]
    task = t2.get_task(
        "generic", source=rows, prompt_field="q", answer_field="a", reward=f"{reward_file}:reward", domain="toy"
    )
    result = t2.train(
        task=task,
        model=model,
        tokenizer=tok,
        out=str(tmp_path / "run"),
        steps=2,
        batch_size=2,
        samples_per_prompt=2,
        max_new_tokens=3,
        eval_every=2,
        progress=False,
    )
    expert = Expert.load(result.out)
    assert expert.meta["domain"] == "toy" and expert.meta["task"] == "toy"
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["config"]["task"] == "toy"
    with pytest.raises(T2Error, match="unknown option 'stepz'"):
        t2.train(task=task, stepz=3)


# --------------------------------------------------------------------------- the CLI


def test_cli_train_then_eval_with_own_data_and_reward(tiny_model_dir, tmp_path, reward_file, capsys):
    rng = random.Random(1)
    data = write_jsonl(
        tmp_path / "toy.jsonl",
        [
            {"q": " ".join(f"w{rng.randrange(5, 128)}" for _ in range(3)), "a": f"w{rng.randrange(5, 128)}"}
            for _ in range(20)
        ],
    )
    out = tmp_path / "expert"
    common = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--prompt-field",
        "q",
        "--answer-field",
        "a",
        "--reward",
        f"{reward_file}:reward",
        "--domain",
        "geo",
        "--max-new-tokens",
        "3",
        "--no-progress",
    ]
    assert (
        main(["train", *common, "--out", str(out), "--steps", "1", "--batch-size", "2", "--samples-per-prompt", "2"])
        == 0
    )
    capsys.readouterr()
    expert = Expert.load(out)
    assert expert.meta["domain"] == "geo" and expert.meta["task"] == "geo"
    # resuming needs the same --data flags (they are not TrainConfig options); the checkpoint checks the task
    assert main(["train", *common, "--out", str(out), "--steps", "2", "--resume"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    assert Expert.load(out).meta["domain"] == "geo"
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert main(["eval", *common, "--expert", str(out), "--out", str(report)]) == 0
    text = capsys.readouterr().out
    assert "geo/test" in text
    saved = json.loads(report.read_text())
    assert saved["task"] == "geo" and saved["n"] == 2 and saved["source"] == str(data)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data", "{dir}/missing.jsonl"], "does not exist"),
        (["--data", "{dir}/toy.jsonl", "--prompt-field", "question"], "missing prompt field 'question'"),
        (
            [
                "--data",
                "{dir}/toy.jsonl",
                "--prompt-field",
                "q",
                "--answer-field",
                "a",
                "--reward",
                "{dir}/myreward.py:raises",
            ],
            "raised ValueError: boom",
        ),
        (
            [
                "--data",
                "{dir}/toy.jsonl",
                "--prompt-field",
                "q",
                "--answer-field",
                "a",
                "--reward",
                "{dir}/myreward.py:short",
            ],
            "returned 3 values for 4 completions",
        ),
        (["--data", "{dir}/toy.jsonl", "--domain", "others"], "reserved"),
        (["--data", "{dir}/toy.jsonl", "--task", "gsm8k"], "two sources of data"),
        ([], "give --task NAME"),
    ],
)
@pytest.mark.parametrize("command", ["train", "eval"])
def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, reward_file, capsys, extra, message, command):
    write_jsonl(tmp_path / "toy.jsonl", [{"q": f"w{i}", "a": f"w{i}"} for i in range(10)])
    out = tmp_path / "never"
    argv = [
        command,
        *(a.replace("{dir}", str(tmp_path)) for a in extra),
        "--model",
        str(tmp_path / "no-model"),
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists() and not out.with_name(out.name + ".run.json").exists()


def test_cli_warns_on_a_shipped_domain(tmp_path, capsys):
    import argparse

    from transformer_squared.cli.common import add_data_args, data_task

    p = argparse.ArgumentParser()
    p.add_argument("--task")
    add_data_args(p)
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"w{i}", "answer": "w5"} for i in range(10)])
    args = p.parse_args(["--data", str(tmp_path / "d.jsonl"), "--domain", "math"])
    args.command = "train"
    task = data_task(args)
    assert task.domain == "math" and args.task == "math"
    assert "warning: domain 'math' is also the domain of a shipped expert" in capsys.readouterr().err


def test_python_task_protocol_shape():
    task = get_task("generic", source=[{"prompt": "p", "answer": "a"}] * 1, val_fraction=0, test_fraction=0)
    assert isinstance(task, t2.TaskProtocol) and isinstance(task, t2.Task)
    assert isinstance(get_task("gsm8k"), TaskProtocol)
