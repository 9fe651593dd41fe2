"""Code tasks end to end through the sandbox (a few items only: each check starts an interpreter)."""

from __future__ import annotations

import pytest

from transformer_squared.tasks import get_task

pytest.importorskip("transformer_squared.sandbox")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("T2_CACHE_DIR", str(tmp_path_factory.mktemp("t2code")))


def test_mbpp_rewards_in_parallel():
    task = get_task("mbpp")
    items = task.load("train")[:3]
    fn = items[0].data["entry_point"]
    completions = [
        items[0].reference,  # the reference solution
        f"Here you go:\n{items[1].reference}\nIt passes the tests.",  # fenced, with prose around
        f"```python\ndef {items[2].data['entry_point']}(*args):\n    return None\n```",  # wrong
    ]
    assert task.rewards(items, completions) == [1.0, 1.0, -1.0]
    assert task.is_correct(items[0], items[0].answer)  # unfenced code
    assert not task.is_correct(items[0], f"def {fn}(*a):\n    raise ValueError\n")
    assert not task.is_correct(items[0], "no code at all")


def test_mbpp_setup_code_runs_before_tests():
    task = get_task("mbpp")
    item = next(it for s in task.splits() for it in task.load(s) if it.data["setup"])
    assert task.is_correct(item, item.reference)


def test_humaneval_body_and_full_function():
    task = get_task("humaneval", reward_correct=1.0, reward_wrong=0.0)
    item = task.load("test")[0]  # has_close_elements
    body = item.answer
    full = (
        "```python\nfrom typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
    )
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    assert task.rewards([item] * 4, [body, full, wrong, "I am not sure."]) == [1.0, 1.0, 0.0, 0.0]
