"""The user's records as a task: options, splits, fields of a record → :class:`Item`, prompts.

:class:`UserData` is the :class:`~transformer_squared.tasks.base.Task` subclass listed first in every
generic task class's bases (``UserData, Task`` / ``UserData, MultipleChoice``), with what they share; what differs between them (how an answer is checked) lives in
:mod:`.task` and :mod:`.reward`. Nothing is cached on disk: the data are read again on every run.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Sequence
from typing import Any

from ...errors import T2Error
from ..base import SPLIT_ORDER, Item, SplitData, Task, render_prompt
from ..sources import Where, partition
from .files import DataSource, default_name, describe, jsonable, read_records, split_name

RESERVED_DOMAINS = ("others",)  # the first pass's "use the base weights" label
SEED = "t2-generic-v1"


class UserData(Task):
    """Reading, splitting and prompting shared by the generic task classes (first in their bases, before
    Task or MultipleChoice: the method order is the same as for a mixin)."""

    # The records are read afresh on every run (no disk cache), so the source is a DataSource (kind and
    # label) rather than the cached tasks' Source; the two share only ``label``, which is what reports use.
    source: DataSource  # type: ignore[assignment]

    def _setup_user(
        self,
        data: Any,
        *,
        prompt_field: str,
        answer_field: str | None,
        domain: str | None,
        instruction: str | None,
        template: str | None,
        chat: bool,
        check: str,
        choices_field: str | None,
        val_fraction: float,
        test_fraction: float,
        split_field: str,
        max_new_tokens: int,
        answer_required: bool,
        reward_correct: float,
        reward_wrong: float,
    ) -> None:
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
        self.source = describe(data)
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
        label = domain if domain is not None else default_name(self.source)
        label = str(label).strip()
        if not label or not re.fullmatch(r"[\w.+-]{1,64}", label):
            raise T2Error(f"--domain {label!r}: use 1 to 64 letters, digits, '_', '-', '.' or '+' (a routing label)")
        if label in RESERVED_DOMAINS:
            raise T2Error(
                f"--domain {label!r} is reserved (the first pass's label for 'use the base weights'); pick another name"
            )
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
        return {
            "splits": {
                s: {
                    "count": len(sd.items),
                    "provenance": sd.provenance,
                    "origin": sd.origin,
                    "held_out": sd.held_out,
                    "overlaps": sd.overlaps,
                }
                for s, sd in self._built().items()
            }
        }

    def prepare(self, force: bool = False) -> dict[str, dict[str, Any]]:
        if force:
            self._splits = None
        return {s: self.split_info(s) for s in self.splits()}

    def load(self, split: str) -> list[Item]:
        self._check_split(split)
        return list(self._built()[split].items)

    def build(self) -> dict[str, SplitData]:
        """Read every record, make items and divide them into splits."""
        groups = read_records(self.data_in, self.source)
        items: list[Item] = []
        marked: list[str | None] = []
        seen: dict[str, str] = {}
        for where, rec, given_split in groups:
            item = self.item_from_record(rec, where, len(items))
            if given_split is not None and rec.get("id") in (None, ""):
                item.id = f"{given_split}-{item.id}"  # official splits may repeat a question
            if item.id in seen:
                raise where.error(
                    f"duplicate id {item.id!r} (also {seen[item.id]}); give each record a unique 'id' "
                    "field, or remove the repeated record"
                )
            seen[item.id] = str(where)
            split = given_split
            if split is None and self.split_field in rec and rec[self.split_field] not in (None, ""):
                split = split_name(rec[self.split_field], where, self.split_field)
            items.append(item)
            marked.append(split)
        origin = self.source.label
        given = [s is not None for s in marked]
        if any(given) and not all(given):
            first = groups[given.index(False)][0]
            raise T2Error(
                f"{first}: no {self.split_field!r} field, but other records have one: give every record "
                "one (train, val, test, fewshot), or none to use --val-fraction/--test-fraction"
            )
        if all(given):
            out: dict[str, SplitData] = {}
            for split in SPLIT_ORDER:
                chosen = [it for it, s in zip(items, marked, strict=True) if s == split]
                if chosen:
                    out[split] = SplitData(
                        chosen, f"{len(chosen)} records marked {split!r} in {origin}", origin, held_out=split == "test"
                    )
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
            raise T2Error(
                f"{origin}: {n} records are too few for --val-fraction {self.val_fraction} and "
                f"--test-fraction {self.test_fraction}; add records or lower the fractions"
            )
        sizes["train"] = None
        parts = partition(items, [it.id for it in items], sizes, SEED)
        out = {}
        for split in ("train", "val", "test"):
            chosen = parts.get(split) or []
            if chosen:
                out[split] = SplitData(
                    chosen,
                    f"{len(chosen)} of {n} records of {origin} (seeded hash partition, "
                    f"seed {SEED!r}; train/val/test disjoint)",
                    origin,
                    held_out=split == "test",
                )
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
            raise where.error(
                f"missing prompt field {self.prompt_field!r} (records have: "
                f"{', '.join(map(repr, list(rec)[:12])) or 'no fields'}; choose with --prompt-field)"
            )
        value = rec[self.prompt_field]
        if isinstance(value, list):  # TRL's conversational format
            if not value or not all(
                isinstance(m, dict)
                and isinstance(m.get("content"), str)
                and m.get("role") in ("system", "user", "assistant")
                for m in value
            ):
                raise where.error(
                    f"field {self.prompt_field!r} is a list but not of chat messages "
                    "({'role': 'user'|'system'|'assistant', 'content': str})"
                )
            return "\n\n".join(m["content"] for m in value if m["role"] != "system"), [
                {"role": m["role"], "content": m["content"]} for m in value
            ]
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise where.error(f"field {self.prompt_field!r} must be text, got {type(value).__name__}")
        text = str(value)
        if not text.strip():
            raise where.error(f"field {self.prompt_field!r} is empty")
        if self.template is not None:
            text = self._fill_template(rec, where)
        return text, None

    def _fill_template(self, rec: dict[str, Any], where: Where) -> str:
        template = self.template
        assert template is not None  # both callers check; _template_fields exists only with a template
        missing = [f for f in self._template_fields if f not in rec]
        if missing:
            raise where.error(f"--template uses field {missing[0]!r}, which this record lacks")
        text = template.format_map({k: ("" if v is None else v) for k, v in rec.items()})
        if not text.strip():
            raise where.error("--template gives an empty prompt")
        return text

    def _answer_of(self, rec: dict[str, Any], where: Where) -> Any:
        field = self.answer_field
        if field is None or field not in rec or rec[field] is None or rec[field] == "":
            if self.answer_required:
                raise where.error(
                    f"missing answer field {field!r} (records have: "
                    f"{', '.join(map(repr, list(rec)[:12]))}; choose with --answer-field)"
                )
            return None
        value = rec[field]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise where.error(f"field {field!r} must be text, a number, or a list of them")
        return [str(v).strip() for v in values] if isinstance(value, list) else str(value).strip()

    def _make_item(
        self,
        rec: dict[str, Any],
        where: Where,
        index: int,
        question: str,
        messages: list[dict[str, str]] | None,
        answer: Any,
        extra: dict[str, Any],
    ) -> Item:
        rid = rec.get("id")
        if rid is not None and str(rid).strip():
            item_id = str(rid)
        else:
            raw = json.dumps(
                rec.get(self.prompt_field) if rec.get(self.prompt_field) is not None else question,
                sort_keys=True,
                ensure_ascii=False,
                default=str,
            )
            item_id = f"rec-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"
        data: dict[str, Any] = {"columns": jsonable(rec), **extra}
        if messages is not None:
            data["messages"] = messages
        reference = answer[0] if isinstance(answer, list) and answer else answer
        return Item(
            id=item_id,
            question=question,
            answer=answer,
            data=data,
            reference=None if reference is None else str(reference),
        )

    # -- prompting ---------------------------------------------------------------------------
    @property
    def instruction(self) -> str:  # type: ignore[override]  # read-only here: the user's --instruction
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
        return [{"role": "user", "content": self.user_content(item)}]

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
