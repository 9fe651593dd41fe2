"""Your own task: prompts and answers from a JSONL/CSV file, a ``datasets`` dataset, a list of dicts or a Hub id.

    from transformer_squared.tasks import get_task
    task = get_task("generic", source="examples/capitals.jsonl", prompt_field="question",
                    answer_field="answer", reward="examples/capitals_reward.py:reward", domain="geography")

* **Fields.** ``prompt_field`` holds the question (a string, or a list of chat messages as in TRL's
  conversational datasets); ``answer_field`` the gold answer (a string, a number, or a list of
  accepted answers). Every field of a record is kept and handed to a reward function.
* **Prompt.** ``template`` (``str.format`` over the record's fields, e.g. ``"Q: {q}"``) builds the
  user turn; ``instruction`` is put before it; ``chat=False`` sends the text without the
  tokenizer's chat template.
* **Checking.** ``check="exact"`` (the stripped completion equals an answer), ``"normalized"``
  (the completion's answer, i.e. the text after "answer is"/"Answer:" or else its first line, equals
  an answer after lower-casing and dropping punctuation, articles and extra spaces), ``"numeric"``
  (the final number, compared exactly), ``"choice"`` (multiple choice: ``choices_field`` lists the
  options, the answer is a letter, a 0-based index or the option text; also scored by
  log-likelihood, ``t2 eval --mode loglik``, and trainable with ``--objective exact``), or
  ``reward=`` a callable with TRL's signature ``reward(completions, **columns) -> list[float]``
  (or ``"pkg.module:function"`` / ``"path/file.py:function"``). With a reward function, accuracy
  counts a completion as correct when its reward is above ``correct_above`` (default 0).
* **Splits.** A ``split`` field on every record (train/val/test/fewshot), or a seeded hash
  partition: ``test_fraction`` and ``val_fraction`` (default 0.1 each) of the records, the rest
  for training. The partition depends only on each record's id (its ``id`` field, else a hash of
  its prompt), so adding records never moves the old ones.
* **Identity.** ``domain`` (default: the file's stem) names the task and is written into the
  expert's metadata, so routing sees the user's label and not a built-in task's.

Nothing here is cached on disk: user data are read again on every run.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import re
import string
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import T2Error
from .base import SPLIT_ALIASES, SPLIT_ORDER, Item, SplitData, Task, render_prompt
from .multiple_choice import LETTERS, MultipleChoice
from .sources import Where, partition, read_user_jsonl

log = logging.getLogger("transformer_squared.tasks")

CHECKS = ("exact", "normalized", "numeric", "choice")
# Domain labels of the shipped experts and of the first pass's fixed categories: a user task with
# one of these would collide with them when routing (AdaptiveModel refuses two experts of one domain).
SHIPPED_DOMAINS = ("math", "code", "reasoning", "classify")
RESERVED_DOMAINS = ("others",)  # the first pass's "use the base weights" label
SEED = "t2-generic-v1"
_HUB_ID = re.compile(r"^(?:hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


@runtime_checkable
class TaskProtocol(Protocol):
    """What training (:func:`transformer_squared.train`) and evaluation need from a task.

    Subclassing :class:`~transformer_squared.tasks.base.Task` gives all of it; a class of your own
    works too if it has these members:

    * ``name`` (str), ``max_new_tokens`` (int), ``reward_correct`` / ``reward_wrong`` (floats);
    * ``splits() -> list[str]`` and ``load(split) -> list[Item]`` (a ``train`` split, and ``val``
      when the best weights are chosen on validation);
    * ``prompt(item, tokenizer) -> str``: the text generation continues;
    * ``rewards(items, completions) -> list[float]``: one reward per completion (training);
    * ``correct_many(items, completions) -> list[bool]`` and ``extract(completion)`` (evaluation).

    Optional: ``split_info(split)`` (provenance for reports), ``source`` (with a ``label``).
    """

    name: str
    max_new_tokens: int
    reward_correct: float
    reward_wrong: float

    def splits(self) -> list[str]: ...
    def load(self, split: str) -> list[Item]: ...
    def prompt(self, item: Item, tokenizer: Any = None) -> str: ...
    def rewards(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]: ...
    def correct_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[bool]: ...
    def extract(self, completion: str) -> Any: ...


@dataclass(frozen=True)
class DataSource:
    """Where a generic task's records come from: ``kind`` (file, hub, python) and a printable label."""

    kind: str
    label: str
    path: Path | None = None


# --------------------------------------------------------------------------- reward functions


def load_reward(spec: str | Callable) -> Callable:
    """A reward callable from ``"pkg.module:function"`` or ``"path/to/file.py:function"`` (T2Error if not)."""
    if callable(spec):
        return spec
    text = str(spec).strip()
    target, sep, attr = text.rpartition(":")
    if not sep or not target or not attr or not attr.isidentifier():
        raise T2Error(f"--reward {text!r}: write MODULE:FUNCTION (e.g. mypkg.rewards:score) or FILE.py:FUNCTION")
    try:
        if target.endswith(".py") or os.sep in target or "/" in target:
            path = Path(target).expanduser()
            if not path.is_file():
                raise T2Error(f"--reward {text!r}: file {target!r} does not exist")
            name = "t2_user_reward_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise T2Error(f"--reward {text!r}: {target!r} is not a Python file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            added = os.getcwd() not in sys.path
            if added:  # like `python -m`: modules next to where the command runs are importable
                sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(target)
            finally:
                if added and os.getcwd() in sys.path:
                    sys.path.remove(os.getcwd())
    except T2Error:
        raise
    except ModuleNotFoundError as exc:
        raise T2Error(f"--reward {text!r}: no module {exc.name!r} (run from the folder that holds it, "
                      "or give the file: path/to/file.py:function)") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise T2Error(f"--reward {text!r}: importing {target!r} raised {type(exc).__name__}: {_one_line(exc)}") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise T2Error(f"--reward {text!r}: {target!r} has no attribute {attr!r}")
    if not callable(fn):
        raise T2Error(f"--reward {text!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _reward_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


# --------------------------------------------------------------------------- answer checks


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_MARKER = re.compile(r"(?:final answer|answer)\s*(?:is|was|:|=)\s*:?\s*", re.IGNORECASE)


def normalize_answer(text: Any) -> str:
    """Lower case, no accents, punctuation or articles, single spaces (``"The  Eiffel-Tower."`` → ``"eiffel tower"``)."""
    s = unicodedata.normalize("NFKD", str(text))
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).lower()
    s = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def free_text_answer(completion: str) -> str | None:
    """The answer a free-text completion gives: what follows the last "answer is"/"Answer:" up to
    the end of its line, else the first non-empty line; ``None`` for an empty completion."""
    text = completion or ""
    marks = list(_MARKER.finditer(text))
    if marks:
        rest = text[marks[-1].end():].strip()
        line = rest.splitlines()[0].strip() if rest else ""
        if line:
            return line
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


# --------------------------------------------------------------------------- the task


class _UserData:
    """Reading, splitting and prompting shared by the generic task classes (a mixin before Task)."""

    name: str
    domain: str
    max_new_tokens: int

    def _setup_user(self, data: Any, *, prompt_field: str, answer_field: str | None, domain: str | None,
                    instruction: str | None, template: str | None, chat: bool, check: str,
                    choices_field: str | None, val_fraction: float, test_fraction: float, split_field: str,
                    max_new_tokens: int, answer_required: bool, reward_correct: float, reward_wrong: float) -> None:
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise T2Error(f"--{name.replace('_', '-')} must be a fraction in [0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise T2Error(f"--val-fraction {val_fraction} + --test-fraction {test_fraction} leave nothing to train on")
        if not prompt_field:
            raise T2Error("--prompt-field must name a field of the records")
        if max_new_tokens < 1:
            raise T2Error(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.data_in = data
        self.source = _describe(data)
        self.prompt_field = prompt_field
        self.answer_field = answer_field or None
        self.answer_required = answer_required
        self.template = template
        self.custom_instruction = instruction or ""
        self.chat = bool(chat)
        self.check = check
        self.choices_field = choices_field
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_field = split_field
        self.max_new_tokens = int(max_new_tokens)
        self.reward_correct = float(reward_correct)
        self.reward_wrong = float(reward_wrong)
        label = domain if domain is not None else _default_name(self.source)
        label = str(label).strip()
        if not label or not re.fullmatch(r"[\w.+-]{1,64}", label):
            raise T2Error(f"--domain {label!r}: use 1 to 64 letters, digits, '_', '-', '.' or '+' (a routing label)")
        if label in RESERVED_DOMAINS:
            raise T2Error(f"--domain {label!r} is reserved (the first pass's label for 'use the base weights'); "
                          "pick another name")
        self.name = label
        self.domain = label
        self._splits: dict[str, SplitData] | None = None
        if template is not None:
            try:
                self._template_fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as exc:
                raise T2Error(f"--template {template!r} is not a valid format string: {exc}") from exc
            bad = [f for f in self._template_fields if not f or not f.isidentifier()]
            if bad:
                raise T2Error(f"--template {template!r}: use named fields such as {{{prompt_field}}}, not {bad[0]!r}")

    # -- identity ----------------------------------------------------------------------------
    @property
    def expert_domain(self) -> str:
        """The routing label written into an expert trained on this task."""
        return self.domain

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, source={self.source.label!r}, check={self.check!r})"

    # -- data (in memory, no disk cache) -------------------------------------------------------
    def _built(self) -> dict[str, SplitData]:
        if self._splits is None:
            self._splits = self.build()
        return self._splits

    def _manifest(self) -> dict[str, Any]:
        return {"splits": {s: {"count": len(sd.items), "provenance": sd.provenance, "origin": sd.origin,
                               "held_out": sd.held_out, "overlaps": sd.overlaps} for s, sd in self._built().items()}}

    def prepare(self, force: bool = False) -> dict[str, dict[str, Any]]:
        if force:
            self._splits = None
        return {s: self.split_info(s) for s in self.splits()}  # type: ignore[attr-defined]

    def load(self, split: str) -> list[Item]:
        self._check_split(split)  # type: ignore[attr-defined]
        return list(self._built()[split].items)

    def build(self) -> dict[str, SplitData]:
        """Read every record, make items and divide them into splits."""
        groups = _read_records(self.data_in, self.source)
        items: list[Item] = []
        marked: list[str | None] = []
        seen: dict[str, str] = {}
        for where, rec, given_split in groups:
            item = self.item_from_record(rec, where, len(items))
            if given_split is not None and rec.get("id") in (None, ""):
                item.id = f"{given_split}-{item.id}"  # official splits may repeat a question
            if item.id in seen:
                raise where.error(f"duplicate id {item.id!r} (also {seen[item.id]}); give each record a unique 'id' "
                                  "field, or remove the repeated record")
            seen[item.id] = str(where)
            split = given_split
            if split is None and self.split_field in rec and rec[self.split_field] not in (None, ""):
                split = _split_name(rec[self.split_field], where, self.split_field)
            items.append(item)
            marked.append(split)
        origin = self.source.label
        given = [s is not None for s in marked]
        if any(given) and not all(given):
            first = groups[given.index(False)][0]
            raise T2Error(f"{first}: no {self.split_field!r} field, but other records have one: give every record "
                          "one (train, val, test, fewshot), or none to use --val-fraction/--test-fraction")
        if all(given):
            out: dict[str, SplitData] = {}
            for split in SPLIT_ORDER:
                chosen = [it for it, s in zip(items, marked, strict=True) if s == split]
                if chosen:
                    out[split] = SplitData(chosen, f"{len(chosen)} records marked {split!r} in {origin}", origin,
                                           held_out=split == "test")
            if "val" not in out and "train" in out and self.val_fraction > 0:
                out.update(self._carve(out.pop("train").items, {"val": self.val_fraction}, origin))
            if "train" not in out:
                raise T2Error(f"{origin}: no record is marked 'train'; training needs some")
            return out
        return self._carve(items, {"test": self.test_fraction, "val": self.val_fraction}, origin)

    def _carve(self, items: list[Item], fractions: dict[str, float], origin: str) -> dict[str, SplitData]:
        n = len(items)
        sizes: dict[str, int | None] = {}
        for split, f in fractions.items():
            sizes[split] = 0 if f <= 0 else max(1, round(n * f)) if n >= 3 else 0
        taken = sum(s or 0 for s in sizes.values())
        if n - taken < 1:
            raise T2Error(f"{origin}: {n} records are too few for --val-fraction {self.val_fraction} and "
                          f"--test-fraction {self.test_fraction}; add records or lower the fractions")
        sizes["train"] = None
        parts = partition(items, [it.id for it in items], sizes, SEED)
        out = {}
        for split in ("train", "val", "test"):
            chosen = parts.get(split) or []
            if chosen:
                out[split] = SplitData(chosen, f"{len(chosen)} of {n} records of {origin} (seeded hash partition, "
                                               f"seed {SEED!r}; train/val/test disjoint)", origin,
                                       held_out=split == "test")
        return out

    # -- records -----------------------------------------------------------------------------
    def _schema(self) -> str:
        need = [repr(self.prompt_field)]
        if self.answer_field and self.answer_required:
            need.append(repr(self.answer_field))
        if self.check == "choice":
            need.append(repr(self.choices_field))
        return " and ".join(need)

    def _prompt_of(self, rec: dict[str, Any], where: Where) -> tuple[str, list[dict[str, str]] | None]:
        if self.template is not None and rec.get(self.prompt_field) is None:
            return self._fill_template(rec, where), None
        if self.prompt_field not in rec or rec[self.prompt_field] is None:
            raise where.error(f"missing prompt field {self.prompt_field!r} (records have: "
                              f"{', '.join(map(repr, list(rec)[:12])) or 'no fields'}; choose with --prompt-field)")
        value = rec[self.prompt_field]
        if isinstance(value, list):  # TRL's conversational format
            if not value or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and
                                    m.get("role") in ("system", "user", "assistant") for m in value):
                raise where.error(f"field {self.prompt_field!r} is a list but not of chat messages "
                                  "({'role': 'user'|'system'|'assistant', 'content': str})")
            return "\n\n".join(m["content"] for m in value if m["role"] != "system"), \
                [{"role": m["role"], "content": m["content"]} for m in value]
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise where.error(f"field {self.prompt_field!r} must be text, got {type(value).__name__}")
        text = str(value)
        if not text.strip():
            raise where.error(f"field {self.prompt_field!r} is empty")
        if self.template is not None:
            text = self._fill_template(rec, where)
        return text, None

    def _fill_template(self, rec: dict[str, Any], where: Where) -> str:
        missing = [f for f in self._template_fields if f not in rec]
        if missing:
            raise where.error(f"--template uses field {missing[0]!r}, which this record lacks")
        text = self.template.format_map({k: ("" if v is None else v) for k, v in rec.items()})  # type: ignore[union-attr]
        if not text.strip():
            raise where.error("--template gives an empty prompt")
        return text

    def _answer_of(self, rec: dict[str, Any], where: Where) -> Any:
        field = self.answer_field
        if field is None or field not in rec or rec[field] is None or rec[field] == "":
            if self.answer_required:
                raise where.error(f"missing answer field {field!r} (records have: "
                                  f"{', '.join(map(repr, list(rec)[:12]))}; choose with --answer-field)")
            return None
        value = rec[field]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise where.error(f"field {field!r} must be text, a number, or a list of them")
        return [str(v).strip() for v in values] if isinstance(value, list) else str(value).strip()

    def _make_item(self, rec: dict[str, Any], where: Where, index: int, question: str,
                   messages: list[dict[str, str]] | None, answer: Any, extra: dict[str, Any]) -> Item:
        rid = rec.get("id")
        if rid is not None and str(rid).strip():
            item_id = str(rid)
        else:
            raw = json.dumps(rec.get(self.prompt_field) if rec.get(self.prompt_field) is not None else question,
                             sort_keys=True, ensure_ascii=False, default=str)
            item_id = f"rec-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"
        data: dict[str, Any] = {"columns": _jsonable(rec), **extra}
        if messages is not None:
            data["messages"] = messages
        reference = answer[0] if isinstance(answer, list) and answer else answer
        return Item(id=item_id, question=question, answer=answer, data=data,
                    reference=None if reference is None else str(reference))

    # -- prompting ---------------------------------------------------------------------------
    @property
    def instruction(self) -> str:  # type: ignore[override]
        return self.custom_instruction

    def messages(self, item: Item) -> list[dict[str, str]]:
        given = item.data.get("messages")
        if given:
            msgs = [dict(m) for m in given]
            if self.custom_instruction:
                for m in msgs:
                    if m["role"] == "user":
                        m["content"] = f"{self.custom_instruction}\n\n{m['content']}"
                        break
            return msgs
        return [{"role": "user", "content": self.user_content(item)}]  # type: ignore[attr-defined]

    def prompt(self, item: Item, tokenizer: Any = None) -> str:
        if self.chat:
            return render_prompt(self.messages(item), tokenizer)
        return "\n\n".join(m["content"] for m in self.messages(item))

    # -- reward interface for callables --------------------------------------------------------
    def reward_columns(self, items: Sequence[Item]) -> dict[str, list[Any]]:
        """The keyword lists a TRL-style reward receives: ``prompts`` and every field of the records."""
        names: list[str] = []
        for it in items:
            for k in it.data.get("columns", {}):
                if k not in names and k not in ("completions", "prompts"):
                    names.append(k)
        cols = {k: [it.data.get("columns", {}).get(k) for it in items] for k in names}
        cols["prompts"] = [it.data.get("columns", {}).get(self.prompt_field) for it in items]
        return cols


class GenericTask(_UserData, Task):
    """A free-text or numeric task on the user's records, checked by ``exact``/``normalized``/``numeric``."""

    name = "generic"
    domain = "generic"
    record_schema = ""

    def __init__(self, source: Any = None, reward_correct: float = 1.0, reward_wrong: float = -1.0, *,
                 prompt_field: str = "prompt", answer_field: str | None = "answer", domain: str | None = None,
                 instruction: str | None = None, template: str | None = None, chat: bool = True,
                 check: str = "normalized", val_fraction: float = 0.1, test_fraction: float = 0.1,
                 split_field: str = "split", max_new_tokens: int = 64, answer_required: bool = True) -> None:
        if check not in ("exact", "normalized", "numeric"):
            raise T2Error(f"--check {check!r} is not one of: {', '.join(CHECKS)}")
        self._setup_user(source, prompt_field=prompt_field, answer_field=answer_field, domain=domain,
                         instruction=instruction, template=template, chat=chat, check=check, choices_field=None,
                         val_fraction=val_fraction, test_fraction=test_fraction, split_field=split_field,
                         max_new_tokens=max_new_tokens, answer_required=answer_required,
                         reward_correct=reward_correct, reward_wrong=reward_wrong)
        self._cache_key = None

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        question, messages = self._prompt_of(rec, where)
        answer = self._answer_of(rec, where)
        if self.check == "numeric" and answer is not None:
            from .gsm8k import parse_answer

            for a in answer if isinstance(answer, list) else [answer]:
                if parse_answer(a) is None:
                    raise where.error(f"answer {a!r} is not a number (--check numeric)")
        return self._make_item(rec, where, index, question, messages, answer, {})

    def extract(self, completion: str) -> str | None:
        if self.check == "exact":
            return completion.strip() or None
        if self.check == "numeric":
            from .gsm8k import extract_number

            return extract_number(completion)
        return free_text_answer(completion)

    def is_correct(self, item: Item, completion: str) -> bool:
        answers = item.answer if isinstance(item.answer, list) else [item.answer]
        if item.answer is None:
            return False
        got = self.extract(completion)
        if got is None:
            return False
        if self.check == "exact":
            return any(got == a for a in answers)
        if self.check == "numeric":
            from .gsm8k import numbers_equal

            return any(numbers_equal(got, a) for a in answers)
        mine = normalize_answer(got)
        return bool(mine) and any(mine == normalize_answer(a) for a in answers)


class GenericChoiceTask(_UserData, MultipleChoice):
    """Multiple choice on the user's records: options in ``choices_field``, scored by letter or log-likelihood."""

    name = "generic"
    domain = "generic"
    record_schema = ""

    def __init__(self, source: Any = None, reward_correct: float = 1.0, reward_wrong: float = -1.0, *,
                 prompt_field: str = "prompt", answer_field: str | None = "answer", choices_field: str = "choices",
                 domain: str | None = None, instruction: str | None = None, template: str | None = None,
                 chat: bool = True, val_fraction: float = 0.1, test_fraction: float = 0.1, split_field: str = "split",
                 max_new_tokens: int = 32) -> None:
        self._setup_user(source, prompt_field=prompt_field, answer_field=answer_field, domain=domain,
                         instruction=instruction if instruction is not None else MultipleChoice.instruction,
                         template=template, chat=chat, check="choice", choices_field=choices_field,
                         val_fraction=val_fraction, test_fraction=test_fraction, split_field=split_field,
                         max_new_tokens=max_new_tokens, answer_required=True,
                         reward_correct=reward_correct, reward_wrong=reward_wrong)
        self._cache_key = None

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        from .arc import format_question

        stem, messages = self._prompt_of(rec, where)
        raw = rec.get(self.choices_field)
        if isinstance(raw, str) and raw.strip().startswith("["):  # a CSV cell holding a JSON list
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                pass
        if raw is None:
            raise where.error(f"missing choices field {self.choices_field!r} (choose with --choices-field)")
        if not isinstance(raw, list) or not 2 <= len(raw) <= len(LETTERS) or \
                not all(isinstance(c, str | int | float) and str(c).strip() for c in raw):
            raise where.error(f"field {self.choices_field!r} must list 2 to {len(LETTERS)} non-empty options")
        choices = [str(c).strip() for c in raw]
        answer = self._answer_of(rec, where)
        if isinstance(answer, list):
            raise where.error(f"field {self.answer_field!r} must be one option (a letter, 0-based index or the text)")
        key = rec[self.answer_field]
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(choices):
                raise where.error(f"answer index {key} is out of range for {len(choices)} choices")
            gold = key
        elif answer in choices:
            gold = choices.index(answer)
        elif answer.upper() in LETTERS[: len(choices)] and len(answer) == 1:
            gold = LETTERS.index(answer.upper())
        elif answer.isdigit() and int(answer) < len(choices):
            gold = int(answer)
        else:
            raise where.error(f"answer {answer!r} is not a letter A-{LETTERS[len(choices) - 1]}, a 0-based index "
                              "or one of the options' texts")
        letter = LETTERS[gold]
        item = self._make_item(rec, where, index, format_question(stem, choices), messages, letter,
                               {"stem": stem.strip(), "choices": choices})
        item.reference = f"The answer is ({letter})."
        return item


class RewardTask(GenericTask):
    """A generic task checked by the user's reward function (TRL's signature).

    ``rewards`` returns the function's values as they are (they drive RL); ``correct_many`` counts
    a completion as correct when its reward is above ``correct_above`` (the accuracy of reports).
    A function that raises, returns the wrong number of values or a non-number raises a T2Error
    with one line naming it; inside training, rl.safe_rewards then retries item by item and
    scores the failing ones ``reward_wrong`` (reported in reward_errors.jsonl).
    """

    def __init__(self, source: Any = None, reward_correct: float = 1.0, reward_wrong: float = -1.0, *,
                 reward: Callable | str, correct_above: float = 0.0, check: str = "normalized", **options: Any) -> None:
        options.setdefault("answer_required", False)
        super().__init__(source, reward_correct, reward_wrong, check=check, **options)
        self.reward_fn = load_reward(reward)
        self.reward_label = reward if isinstance(reward, str) else _reward_name(self.reward_fn)
        self.correct_above = float(correct_above)
        self._accepts = _accepted_kwargs(self.reward_fn)

    def _call(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]:
        kwargs = {"completions": list(completions), **self.reward_columns(items)}
        if self._accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self._accepts}
        who = f"reward {self.reward_label}"
        try:
            out = self.reward_fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code; one line that names it
            raise T2Error(f"{who} raised {type(exc).__name__}: {_one_line(exc)}") from exc
        try:
            values = list(out)
        except TypeError:
            raise T2Error(f"{who} returned a {type(out).__name__}; it must return a list of floats, one per "
                          "completion") from None
        if len(values) != len(completions):
            raise T2Error(f"{who} returned {len(values)} values for {len(completions)} completions; it must return "
                          "one float per completion")
        result = []
        for i, v in enumerate(values):
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise T2Error(f"{who} returned {v!r} for completion {i}; rewards must be numbers") from None
            if not math.isfinite(f):
                raise T2Error(f"{who} returned {f} for completion {i}; rewards must be finite")
            result.append(f)
        return result

    def rewards(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]:
        if len(items) != len(completions):
            raise ValueError(f"{len(items)} items but {len(completions)} completions")
        return self._call(items, completions)

    def reward(self, item: Item, completion: str) -> float:
        return self._call([item], [completion])[0]

    def correct_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[bool]:
        return [r > self.correct_above for r in self.rewards(items, completions)]

    def is_correct(self, item: Item, completion: str) -> bool:
        return self.reward(item, completion) > self.correct_above

    def check_reward(self, n: int = 4) -> None:
        """Call the reward once on a few training records, with their gold answers (or an empty
        string) as completions, so a broken function fails before a model is loaded."""
        items = self.load("train")[:n]
        completions = [str(it.reference or "") for it in items]
        self._call(items, completions)


def generic_task(source: Any, *, reward_correct: float = 1.0, reward_wrong: float = -1.0,
                 reward: Callable | str | None = None, check: str | None = None, **options: Any) -> Task:
    """The generic task for ``source`` (what ``get_task("generic", source=..., ...)`` returns).

    ``source``: a .jsonl/.json/.csv/.tsv path, a Hub dataset id (``owner/name``, loaded with
    ``datasets.load_dataset``), a ``datasets.Dataset``/``DatasetDict``, a list of dicts, or a dict
    of split name → rows. See the module docstring for the options.
    """
    if source is None or (isinstance(source, str) and source in ("offline", "hub")):
        raise T2Error("the generic task needs data: --data FILE.jsonl|FILE.csv|HUB_ID (Python: source=...)")
    if check is not None and check not in CHECKS:
        raise T2Error(f"--check {check!r} is not one of: {', '.join(CHECKS)}")
    try:
        if reward is not None:
            if check == "choice":
                raise T2Error("--check choice and --reward are two ways to score; give one")
            task: Task = RewardTask(source, reward_correct, reward_wrong, reward=reward,
                                    check=check or "normalized", **options)
        elif check == "choice":
            task = GenericChoiceTask(source, reward_correct, reward_wrong, **options)
        else:
            task = GenericTask(source, reward_correct, reward_wrong, check=check or "normalized", **options)
    except TypeError as exc:
        raise T2Error(f"generic task: {exc}".replace("__init__() ", "")) from exc
    return task


def check_domain(domain: str, experts_domains: Sequence[str] = ()) -> str | None:
    """A warning line when ``domain`` collides with a shipped expert's (or another given) domain, else None."""
    taken = set(SHIPPED_DOMAINS) | set(experts_domains)
    if domain in taken:
        return (f"domain {domain!r} is also the domain of a shipped expert: routing cannot tell them apart and "
                f"t2 eval --adapt refuses two experts of one domain; pass --domain with a name of your own")
    return None


def prepare_task(task: Any) -> None:
    """Read a generic task's data and try its reward function now (T2Error: one line), before any model loads."""
    if isinstance(task, _UserData):
        task.splits()  # type: ignore[attr-defined]
        if isinstance(task, RewardTask):
            task.check_reward()


def stamp_domain(out: str | os.PathLike, task: Any) -> None:
    """Write a generic task's domain into the expert saved in ``out`` (``expert.json``; atomic)."""
    domain = getattr(task, "expert_domain", None)
    path = Path(out) / "expert.json"
    if not domain or not path.is_file():
        return
    from ..fileio import write_json

    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("domain") != domain:
        meta["domain"] = domain
        write_json(path, meta)


# --------------------------------------------------------------------------- reading records


def _describe(data: Any) -> DataSource:
    if isinstance(data, DataSource):
        return data
    if isinstance(data, str | os.PathLike):
        text = os.fspath(data)
        path = Path(text).expanduser()
        if path.is_file():
            return DataSource("file", str(path.resolve()), path.resolve())
        if path.is_dir():
            raise T2Error(f"--data {text!r} is a folder; give a .jsonl, .json or .csv file")
        if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv") or not _HUB_ID.match(text):
            raise T2Error(f"data file {text!r} does not exist (give a .jsonl/.json/.csv file, or a Hub dataset id "
                          "such as owner/name)")
        return DataSource("hub", text.removeprefix("hub:"))
    if isinstance(data, Mapping):
        return DataSource("python", f"python dict of {len(data)} splits")
    try:
        n = len(data)
    except TypeError:
        raise T2Error(f"cannot read records from a {type(data).__name__}: give a file path, a Hub id, a "
                      "datasets.Dataset or a list of dicts") from None
    return DataSource("python", f"{type(data).__name__} of {n} records")


def _read_records(data: Any, src: DataSource) -> list[tuple[Where, dict[str, Any], str | None]]:
    """``(where, record, split or None)`` for every record; T2Error naming the place when one is bad."""
    if src.kind == "file":
        return [(w, r, None) for w, r in _read_file(src.path)]  # type: ignore[arg-type]
    if src.kind == "hub":
        try:
            import datasets  # type: ignore[import-not-found]
        except ImportError as exc:
            raise T2Error("a Hub dataset id needs the datasets library: run `pip install datasets`") from exc
        try:
            data = datasets.load_dataset(src.label)
        except Exception as exc:  # noqa: BLE001 - network, auth, unknown id: all user-fixable
            raise T2Error(f"could not load dataset {src.label!r} from the Hub: {_one_line(exc)}") from exc
    if isinstance(data, Mapping):
        if len(data) == 1:
            data = next(iter(data.values()))
        else:
            out = []
            for key, rows in data.items():
                split = _split_name(key, Where(src.label), "split name")
                out += [(w, r, split) for w, r in _rows(rows, f"{src.label} [{key}]")]
            if not out:
                raise T2Error(f"{src.label}: no records")
            return out
    out = [(w, r, None) for w, r in _rows(data, src.label)]
    if not out:
        raise T2Error(f"{src.label}: no records")
    return out


def _rows(rows: Any, label: str) -> list[tuple[Where, dict[str, Any]]]:
    out = []
    for i, rec in enumerate(rows):
        if not isinstance(rec, Mapping):
            raise T2Error(f"{label} record {i} is a {type(rec).__name__}, not a dict of fields")
        out.append((_RowWhere(label, i), dict(rec)))
    return out


class _RowWhere(Where):
    def __str__(self) -> str:
        return f"{self.path} record {self.lineno}"


def _read_file(path: Path) -> list[tuple[Where, dict[str, Any]]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl" or (suffix == ".json" and not _starts_with(path, "[")):
            return [(Where(path, n), rec) for n, rec in read_user_jsonl(path)]
        if suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise T2Error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
            if not isinstance(rows, list) or not rows:
                raise T2Error(f"{path}: a .json file must hold a non-empty list of records (or one record a line)")
            return [(_RowWhere(path, i), r) if isinstance(r, dict) else _not_dict(path, i, r)
                    for i, r in enumerate(rows)]
        if suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                if not reader.fieldnames:
                    raise T2Error(f"{path}: empty CSV (the first line must name the columns)")
                out = []
                for rec in reader:
                    if None in rec:
                        raise T2Error(f"{path} line {reader.line_num}: more cells than the header has columns")
                    out.append((Where(path, reader.line_num), dict(rec)))
            if not out:
                raise T2Error(f"{path}: the CSV has a header but no rows")
            return out
    except UnicodeDecodeError as exc:
        raise T2Error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise T2Error(f"{path}: bad CSV ({exc})") from exc
    raise T2Error(f"{path}: unknown file type {suffix or '(none)'!r}; use .jsonl, .json, .csv or .tsv")


def _not_dict(path: Path, i: int, rec: Any):
    raise T2Error(f"{path}: record {i} is a JSON {type(rec).__name__}, not an object")


def _starts_with(path: Path, ch: str) -> bool:
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith(ch)


def _split_name(value: Any, where: Where, what: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in SPLIT_ALIASES:
        raise where.error(f"{what} {value!r} is not one of train, val (validation, dev), test, fewshot")
    return SPLIT_ALIASES[value.strip().lower()]


def _default_name(src: DataSource) -> str:
    if src.kind == "file" and src.path is not None:
        stem = src.path.stem
    elif src.kind == "hub":
        stem = src.label.rsplit("/", 1)[-1]
    else:
        return "custom"
    name = re.sub(r"[^\w.+-]+", "_", stem).strip("_")[:64]
    return name or "custom"


def _jsonable(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in rec.items():
        try:
            json.dumps(v)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = str(v)
    return out


def _accepted_kwargs(fn: Callable) -> set[str] | None:
    """The keyword names ``fn`` takes, or None when it takes ``**kwargs`` (then it gets every column)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


__all__ = ["CHECKS", "DataSource", "GenericChoiceTask", "GenericTask", "RewardTask", "TaskProtocol", "check_domain",
           "free_text_answer", "generic_task", "load_reward", "normalize_answer", "prepare_task", "stamp_domain"]
