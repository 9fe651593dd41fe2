"""Multiple-choice tasks: two ways to ask the model, one gold option.

* **Generation** (the default of ``t2 eval``): the chat prompt shows the question with lettered
  options and the model writes its answer; the checker reads the letter (or the option's text).
* **Log-likelihood** (``t2 eval --mode loglik``), as lm-eval scores these benchmarks:
  - ``cloze``: each option's text is scored after ``Question: ...\\nAnswer:`` and the option with
    the highest (length-normalised) log-likelihood is the answer;
  - ``letter``: each option's letter is scored as the first token after the chat prompt, which is
    what generation samples first (so what ``t2 generate`` and ``t2 serve`` gain from).

A task says how to build its cloze requests (:meth:`MultipleChoice.cloze_requests`) and which
option is gold (:meth:`MultipleChoice.gold_index`); scoring lives in
:mod:`transformer_squared.scoring`.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from .base import Item, Task

LETTERS = "ABCDEFGH"
CHANNELS = ("cloze", "letter")


class MultipleChoice(Task):
    """Base class of tasks whose answer is one option of a few; ``item.answer`` is its letter."""

    max_new_tokens = 32
    instruction = "Answer the following multiple-choice question with the letter of the correct option only."

    # ------------------------------------------------------------------ options

    def choices(self, item: Item) -> list[str]:
        """The option texts, in the order their letters are shown."""
        return list(item.data["choices"])

    def gold_index(self, item: Item) -> int:
        """Position of the correct option."""
        return LETTERS.index(str(item.answer))

    def cloze_context(self, item: Item) -> str:
        """The zero-shot cloze context the options are scored after."""
        return item.data.get("cloze") or f"Question: {item.data['stem']}\nAnswer:"

    def cloze_requests(self, item: Item) -> list[tuple[str, str]]:
        """(context, continuation) per option; tasks with per-option contexts store them in ``data``."""
        if item.data.get("requests"):
            return [(str(c), str(t)) for c, t in item.data["requests"]]
        ctx = self.cloze_context(item)
        return [(ctx, " " + c) for c in self.choices(item)]

    def letter_requests(self, item: Item, tokenizer: Any = None) -> list[tuple[str, str]]:
        """(chat prompt, letter) per option: the letter as the first thing the assistant says."""
        prompt = self.prompt(item, tokenizer)
        return [(prompt, LETTERS[i]) for i in range(len(self.choices(item)))]

    def requests(self, item: Item, channel: str, tokenizer: Any = None) -> list[tuple[str, str]]:
        """The scoring requests of one item in a channel (``cloze`` or ``letter``)."""
        if channel == "cloze":
            return self.cloze_requests(item)
        if channel == "letter":
            return self.letter_requests(item, tokenizer)
        from ..errors import T2Error

        raise T2Error(f"unknown answer channel {channel!r}; use one of: {', '.join(CHANNELS)}")

    # ------------------------------------------------------------------ checking (generation mode)

    def extract(self, completion: str) -> str | None:
        """The chosen letter without knowing the options, or ``None``."""
        from .arc import extract_choice

        return extract_choice(completion)

    def extract_for(self, item: Item, completion: str) -> str | None:
        """The chosen letter using the item's options (option text, numeric labels), or ``None``."""
        from .arc import extract_choice

        return extract_choice(completion, item.data.get("choices"), item.data.get("orig_labels"))

    def is_correct(self, item: Item, completion: str) -> bool:
        """The chosen letter equals the gold letter."""
        return self.extract_for(item, completion) == item.answer


def is_multiple_choice(task: Any) -> TypeGuard[MultipleChoice]:
    """Whether a task can be scored by log-likelihood over its options."""
    return isinstance(task, MultipleChoice)
