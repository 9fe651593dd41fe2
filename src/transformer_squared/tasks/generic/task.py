"""The generic task classes checked without user code: free text / numbers, and multiple choice."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from ...errors import T2Error
from ..base import Item, Task
from ..multiple_choice import LETTERS, MultipleChoice
from ..sources import Where
from .data import UserData

CHECKS = ("exact", "normalized", "numeric", "choice")


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
        rest = text[marks[-1].end() :].strip()
        line = rest.splitlines()[0].strip() if rest else ""
        if line:
            return line
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


class GenericTask(UserData, Task):
    """A free-text or numeric task on the user's records, checked by ``exact``/``normalized``/``numeric``."""

    name = "generic"
    domain = "generic"
    record_schema = ""

    def __init__(
        self,
        source: Any = None,
        reward_correct: float = 1.0,
        reward_wrong: float = -1.0,
        *,
        prompt_field: str = "prompt",
        answer_field: str | None = "answer",
        domain: str | None = None,
        instruction: str | None = None,
        template: str | None = None,
        chat: bool = True,
        check: str = "normalized",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_field: str = "split",
        max_new_tokens: int = 64,
        answer_required: bool = True,
    ) -> None:
        if check not in ("exact", "normalized", "numeric"):
            raise T2Error(f"--check {check!r} is not one of: {', '.join(CHECKS)}")
        self._setup_user(
            source,
            prompt_field=prompt_field,
            answer_field=answer_field,
            domain=domain,
            instruction=instruction,
            template=template,
            chat=chat,
            check=check,
            choices_field=None,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_field=split_field,
            max_new_tokens=max_new_tokens,
            answer_required=answer_required,
            reward_correct=reward_correct,
            reward_wrong=reward_wrong,
        )
        self._cache_key = None

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        question, messages = self._prompt_of(rec, where)
        answer = self._answer_of(rec, where)
        if self.check == "numeric" and answer is not None:
            from ..gsm8k import parse_answer

            for a in answer if isinstance(answer, list) else [answer]:
                if parse_answer(a) is None:
                    raise where.error(f"answer {a!r} is not a number (--check numeric)")
        return self._make_item(rec, where, index, question, messages, answer, {})

    def extract(self, completion: str) -> str | None:
        if self.check == "exact":
            return completion.strip() or None
        if self.check == "numeric":
            from ..gsm8k import extract_number

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
            from ..gsm8k import numbers_equal

            return any(numbers_equal(got, a) for a in answers)
        mine = normalize_answer(got)
        return bool(mine) and any(mine == normalize_answer(a) for a in answers)


# UserData.instruction (the user's --instruction) is a read-only property where MultipleChoice has a class
# string; mypy rejects a read-only override of a writable attribute, and a setter would change behaviour.
class GenericChoiceTask(UserData, MultipleChoice):  # type: ignore[override]
    """Multiple choice on the user's records: options in ``choices_field``, scored by letter or log-likelihood."""

    name = "generic"
    domain = "generic"
    record_schema = ""
    choices_field: str  # always given here (UserData's is None for the free-text classes)

    def __init__(
        self,
        source: Any = None,
        reward_correct: float = 1.0,
        reward_wrong: float = -1.0,
        *,
        prompt_field: str = "prompt",
        answer_field: str | None = "answer",
        choices_field: str = "choices",
        domain: str | None = None,
        instruction: str | None = None,
        template: str | None = None,
        chat: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_field: str = "split",
        max_new_tokens: int = 32,
    ) -> None:
        self._setup_user(
            source,
            prompt_field=prompt_field,
            answer_field=answer_field,
            domain=domain,
            instruction=instruction if instruction is not None else MultipleChoice.instruction,
            template=template,
            chat=chat,
            check="choice",
            choices_field=choices_field,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_field=split_field,
            max_new_tokens=max_new_tokens,
            answer_required=True,
            reward_correct=reward_correct,
            reward_wrong=reward_wrong,
        )
        self._cache_key = None

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        from ..arc import format_question

        stem, messages = self._prompt_of(rec, where)
        raw = rec.get(self.choices_field)
        if isinstance(raw, str) and raw.strip().startswith("["):  # a CSV cell holding a JSON list
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                pass
        if raw is None:
            raise where.error(f"missing choices field {self.choices_field!r} (choose with --choices-field)")
        if (
            not isinstance(raw, list)
            or not 2 <= len(raw) <= len(LETTERS)
            or not all(isinstance(c, str | int | float) and str(c).strip() for c in raw)
        ):
            raise where.error(f"field {self.choices_field!r} must list 2 to {len(LETTERS)} non-empty options")
        choices = [str(c).strip() for c in raw]
        answer = self._answer_of(rec, where)
        if isinstance(answer, list):
            raise where.error(f"field {self.answer_field!r} must be one option (a letter, 0-based index or the text)")
        assert self.answer_field is not None  # answers are required here: _answer_of raised without a field
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
            raise where.error(
                f"answer {answer!r} is not a letter A-{LETTERS[len(choices) - 1]}, a 0-based index "
                "or one of the options' texts"
            )
        letter = LETTERS[gold]
        item = self._make_item(
            rec,
            where,
            index,
            format_question(stem, choices),
            messages,
            letter,
            {"stem": stem.strip(), "choices": choices},
        )
        item.reference = f"The answer is ({letter})."
        return item
