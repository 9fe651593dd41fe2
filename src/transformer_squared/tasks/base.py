"""The :class:`Task` interface every task implements, the :class:`Item` record, and the data cache.

A task knows three things: where its data comes from (building normalised :class:`Item` lists
per split), how to ask a model about an item (chat messages / a prompt string), and how to check
a completion (extract the answer, compare with the gold, turn that into a reward).

Built splits are cached once as JSONL under ``cache_dir("data", <source>, <task>)`` with a
``manifest.json`` (counts and provenance per split); every file is written atomically, and the
manifest last, so an interrupted build is simply redone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..errors import T2Error
from ..fileio import write_json, write_text
from ..generation import render_prompt  # the one prompt format (tasks, adaptation and t2 serve share it)
from ..paths import cache_dir
from .sources import Source, Where, fraction_sizes, parse_source, partition, rank, read_user_jsonl

# Bump when the normalised item format or a partition changes: old caches are rebuilt.
CACHE_FORMAT = 2  # 2: SciQ options in a seeded order

# Canonical split order for listings.
SPLIT_ORDER = ("train", "val", "test", "fewshot")

# Split names a user's JSONL may use in its optional "split" field, with accepted aliases.
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "fewshot": "fewshot",
}

# The hash seed of the few-shot examples t2 eval --adapt fewshot draws (Task.fewshot_items).
FEWSHOT_SEED = "t2-fewshot"

# In-process memo of loaded splits, keyed by (cache folder, split).
_MEMO: dict[tuple[str, str], list[Item]] = {}
_MANIFESTS: dict[str, dict[str, Any]] = {}


@dataclass
class Item:
    """One task example.

    ``question`` is what the user asks (already formatted, e.g. with the options for ARC);
    ``answer`` is the gold answer used by the checker; ``data`` holds task-specific fields
    (tests, entry point, choices, ...); ``reference`` is a reference solution text in the
    format the task's instruction asks for, usable for supervised fine-tuning (or ``None``).
    """

    id: str
    question: str
    answer: Any
    data: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the cache line format)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=d["id"],
            question=d["question"],
            answer=d.get("answer"),
            data=d.get("data") or {},
            reference=d.get("reference"),
        )


@dataclass
class SplitData:
    """A built split: its items and how it was made."""

    items: list[Item]
    provenance: str
    origin: str
    held_out: bool = False
    overlaps: str | None = None


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

    Optional: ``split_info(split)`` (provenance for reports), ``source`` (with a ``label``),
    ``extract_for(item, completion)`` (the answer read with the item's options; else ``extract``).
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


class Task:
    """Base class of all tasks; see the module docstring and docs/tasks.md.

    Subclasses set ``name``, ``domain``, ``max_new_tokens`` and ``instruction`` and implement
    ``_build_offline``, ``_build_hub``, ``item_from_record`` (the user JSONL schema),
    ``user_content`` and ``extract`` / ``is_correct``.
    """

    # Class attributes a task class sets; the generic tasks set them per instance (from the user's options).
    name: str = ""
    domain: str = ""
    max_new_tokens: int = 256
    instruction: ClassVar[str] = ""
    # Human-readable list of fields a user JSONL record needs (for error messages).
    record_schema: ClassVar[str] = ""
    # How a user file without "split" fields is divided: fractions (None = the rest), ordered.
    user_fractions: ClassVar[dict[str, float | None]] = {"test": 0.5, "val": 0.1, "train": None}
    # Seeded sample size of the "fewshot" split for evaluation-only tasks (0: no such split).
    fewshot_size: ClassVar[int] = 0

    def __init__(
        self, source: str | os.PathLike | Source = "offline", reward_correct: float = 1.0, reward_wrong: float = -1.0
    ):
        self.source = parse_source(source)
        self.reward_correct = float(reward_correct)
        self.reward_wrong = float(reward_wrong)
        self._cache_key: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, source={self.source.label!r})"

    # ------------------------------------------------------------------ data

    @property
    def cache_name(self) -> str:
        """The cache folder name of this task (subclasses with options add a suffix)."""
        return self.name

    def cache_folder(self) -> Path:
        """``cache_dir("data", <source key>, <task>)``, created on demand."""
        if self._cache_key is None:
            self._cache_key = self.source.key
        return cache_dir("data", self._cache_key, self.cache_name)

    def _manifest(self) -> dict[str, Any]:
        """The manifest of the cached splits, building the cache first if needed."""
        folder = self.cache_folder()
        key = str(folder)
        if key in _MANIFESTS:
            return _MANIFESTS[key]
        path = folder / "manifest.json"
        manifest = None
        if path.is_file():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                manifest = None
            if manifest and (
                manifest.get("format") != CACHE_FORMAT
                or not all((folder / f"{s}.jsonl").is_file() for s in manifest.get("splits", {}))
            ):
                manifest = None
        if manifest is None:
            manifest = self._write_cache(folder)
        _MANIFESTS[key] = manifest
        return manifest

    def _write_cache(self, folder: Path) -> dict[str, Any]:
        built = self.build()
        if not built:
            raise T2Error(f"task {self.name!r} built no data from source {self.source.label!r}")
        splits: dict[str, Any] = {}
        for split in sorted(built, key=_split_sort_key):
            sd = built[split]
            write_text(folder / f"{split}.jsonl", "".join(json.dumps(it.to_dict()) + "\n" for it in sd.items))
            splits[split] = {
                "count": len(sd.items),
                "provenance": sd.provenance,
                "origin": sd.origin,
                "held_out": sd.held_out,
                "overlaps": sd.overlaps,
            }
            _MEMO.pop((str(folder), split), None)
        manifest = {"format": CACHE_FORMAT, "task": self.name, "source": self.source.label, "splits": splits}
        write_json(folder / "manifest.json", manifest)
        return manifest

    def prepare(self, force: bool = False) -> dict[str, dict[str, Any]]:
        """Build (or reuse) the cache for every split; return ``{split: split_info}``.

        ``force=True`` rebuilds it from the source even when a valid cache exists.
        """
        if force:
            folder = self.cache_folder()
            _MANIFESTS[str(folder)] = self._write_cache(folder)
        return {s: self.split_info(s) for s in self.splits()}

    def splits(self) -> list[str]:
        """The split names this task has with its source, in canonical order."""
        return sorted(self._manifest()["splits"], key=_split_sort_key)

    def _check_split(self, split: str) -> None:
        names = self.splits()
        if split not in names:
            raise T2Error(
                f"task {self.name!r} has no split {split!r} with source {self.source.label!r}; "
                f"choose one of: {', '.join(names)}"
            )

    def split_info(self, split: str) -> dict[str, Any]:
        """``{task, split, source, count, provenance, origin, held_out, overlaps}`` for one split.

        ``provenance`` is a sentence reports should print (it says, for example, when a
        training pool was carved out of an official test split).
        """
        self._check_split(split)
        info = dict(self._manifest()["splits"][split])
        return {"task": self.name, "split": split, "source": self.source.label, **info}

    def load(self, split: str) -> list[Item]:
        """The items of one split (built and cached on first use). Unknown split: T2Error."""
        self._check_split(split)
        key = (str(self.cache_folder()), split)
        if key not in _MEMO:
            path = self.cache_folder() / f"{split}.jsonl"
            with open(path, encoding="utf-8") as f:
                _MEMO[key] = [Item.from_dict(json.loads(line)) for line in f if line.strip()]
        return list(_MEMO[key])

    def build(self) -> dict[str, SplitData]:
        """Build every split from the source (no caching): ``{split: SplitData}``."""
        if self.source.kind == "offline":
            return self._build_offline()
        if self.source.kind == "hub":
            return self._build_hub()
        assert self.source.path is not None  # a "file" source always has its path
        return self._build_file(self.source.path)

    def _build_offline(self) -> dict[str, SplitData]:
        raise NotImplementedError

    def _build_hub(self) -> dict[str, SplitData]:
        raise NotImplementedError

    def item_from_record(self, rec: dict[str, Any], where: Where, index: int) -> Item:
        """Normalise one user/hub record into an :class:`Item` (T2Error naming ``where`` if bad)."""
        raise NotImplementedError

    def _build_file(self, path: Path) -> dict[str, SplitData]:
        """Items from a user's JSONL; split by each record's ``split`` field or by the default plan."""
        rows = read_user_jsonl(path)
        items: list[Item] = []
        split_of: list[str | None] = []
        seen: dict[str, int] = {}
        for n, (lineno, rec) in enumerate(rows):
            where = Where(path, lineno, self.record_schema)
            item = self.item_from_record(rec, where, n)
            if "id" in rec and rec["id"] is not None:
                item.id = str(rec["id"])
            if item.id in seen:
                raise where.error(f"duplicate id {item.id!r} (first used on line {seen[item.id]})")
            seen[item.id] = lineno
            split = rec.get("split")
            if split is not None:
                if not isinstance(split, str) or split.lower() not in SPLIT_ALIASES:
                    raise where.error(f"field 'split' is {split!r}; use one of train, val, test, fewshot")
                split = SPLIT_ALIASES[split.lower()]
            items.append(item)
            split_of.append(split)
        origin = f"user file {path}"
        given = [s is not None for s in split_of]
        if any(given) and not all(given):
            lineno = rows[given.index(False)][0]
            raise T2Error(
                f"{path} line {lineno}: missing field 'split' (some lines have one, so every line needs "
                "one: train, val, test or fewshot; or drop it everywhere to use the default partition)"
            )
        if all(given):
            out: dict[str, SplitData] = {}
            for split in SPLIT_ORDER:
                chosen = [it for it, s in zip(items, split_of, strict=True) if s == split]
                if chosen:
                    out[split] = SplitData(
                        chosen, f"{split} split as marked in {path.name}", origin, held_out=split == "test"
                    )
            return out
        return self.split_pool(
            items, origin=origin, pool_desc=f"the records of {path.name}", seed=f"t2-{self.name}-file"
        )

    def split_pool(self, items: list[Item], *, origin: str, pool_desc: str, seed: str) -> dict[str, SplitData]:
        """Divide one unsplit pool by the task's default plan (seeded hash of the item ids).

        Evaluation-only tasks (``user_fractions`` empty) keep the whole pool as ``test`` and add a
        small seeded ``fewshot`` sample drawn from it; others use ``user_fractions``.
        """
        ids = [it.id for it in items]
        if not self.user_fractions:
            out = {
                "test": SplitData(
                    items, f"all of {pool_desc}; an evaluation-only task, never trained on", origin, held_out=True
                )
            }
            if self.fewshot_size:
                k = min(self.fewshot_size, len(items))
                few = partition(items, ids, {"fewshot": k}, seed)["fewshot"]
                out["fewshot"] = SplitData(
                    few,
                    f"{k} items of {pool_desc} (seeded hash, seed {seed!r}) for few-shot "
                    "adaptation; they are also in 'test'",
                    origin,
                    overlaps="test",
                )
            return out
        sizes = fraction_sizes(len(items), self.user_fractions)
        parts = partition(items, ids, sizes, seed)
        out = {}
        for split, chosen in parts.items():
            if chosen:
                out[split] = SplitData(
                    chosen,
                    f"{len(chosen)} of the {len(items)} records of {pool_desc}, "
                    f"seeded hash partition (seed {seed!r}); train/val/test are disjoint",
                    origin,
                    held_out=split == "test",
                )
        return out

    # ------------------------------------------------------------------ sampling

    def sample(self, split: str, n: int, seed: str) -> list[Item]:
        """``n`` items of ``split`` (all of them when it has fewer), picked and ordered by a seeded hash of their ids.

        The pick depends only on ``seed`` and the ids, so it is the same on every run and machine.
        """
        pool = self.load(split)
        by_id = {it.id: it for it in pool}
        return [by_id[i] for i in rank([it.id for it in pool], str(seed))[: max(0, n)]]

    def fewshot_items(self, n: int) -> list[Item]:
        """``n`` labelled examples for few-shot adaptation (``t2 eval --adapt fewshot``).

        Drawn by :meth:`sample` (seed :data:`FEWSHOT_SEED`) from the task's ``fewshot`` split, else ``val``,
        else ``train``. T2Error when ``n`` is below 1 or that split has fewer than ``n`` items.
        """
        names = self.splits()
        split = next((s for s in ("fewshot", "val", "train") if s in names), None)
        if split is None:  # pragma: no cover - every task has one of them
            raise T2Error(f"task {self.name!r} has no split to draw few-shot examples from")
        if n < 1:
            raise T2Error("--shots must be at least 1")
        size = len(self.load(split))
        if size < n:
            raise T2Error(f"fewshot asked for {n} examples but {self.name}/{split} has only {size}")
        return self.sample(split, n, FEWSHOT_SEED)

    # ------------------------------------------------------------------ prompting

    def user_content(self, item: Item) -> str:
        """The text of the user turn: the task's instruction and the item's question."""
        return f"{self.instruction}\n\n{item.question}" if self.instruction else item.question

    def messages(self, item: Item) -> list[dict[str, str]]:
        """Chat messages for the item: one user turn with the instruction and question."""
        return [{"role": "user", "content": self.user_content(item)}]

    def prompt(self, item: Item, tokenizer: Any = None) -> str:
        """The prompt string for generation.

        Uses the tokenizer's chat template (with the generation prompt) when it has one; else a
        plain ``"Question: ...\\nAnswer:"`` format.
        """
        return render_prompt(self.messages(item), tokenizer)

    # ------------------------------------------------------------------ checking

    def extract(self, completion: str) -> str | None:
        """The answer a completion gives (``None`` when it gives none; never a guess)."""
        raise NotImplementedError

    def extract_for(self, item: Item, completion: str) -> Any:
        """The answer the checker reads for ``item`` (what reports show); tasks whose items carry
        options read them here (multiple choice). By default :meth:`extract`."""
        return self.extract(completion)

    def is_correct(self, item: Item, completion: str) -> bool:
        """Whether the completion's answer matches the item's gold answer."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Import what :meth:`is_correct` needs (no-op here). The reward guard calls it before it
        forks its checker, so a slow first import is paid once, not inside each sample's budget."""

    def correct_many(self, items: Sequence[Item], completions: Sequence[str]) -> list[bool]:
        """:meth:`is_correct` over a batch (code tasks run their checks in parallel)."""
        _same_length(items, completions)
        return [self.is_correct(it, c) for it, c in zip(items, completions, strict=True)]

    def reward(self, item: Item, completion: str) -> float:
        """``reward_correct`` if the completion is correct, else ``reward_wrong``."""
        return self.reward_correct if self.is_correct(item, completion) else self.reward_wrong

    def rewards(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]:
        """:meth:`reward` over a batch, in order."""
        return [self.reward_correct if ok else self.reward_wrong for ok in self.correct_many(items, completions)]


def carved_splits(
    items: list[Item],
    sizes: dict[str, int | None],
    seed: str,
    note: str,
    src: str,
    train_suffix: str = "disjoint from the held-out test part",
) -> dict[str, SplitData]:
    """train/val/test carved by seeded hash from an official test split (tasks with no offline train).

    ``note`` says where the items come from; each split's provenance repeats it with its own part.
    """
    from .sources import partition

    parts = partition(items, [it.id for it in items], sizes, seed)
    return {
        "train": SplitData(
            parts["train"], f"{note}: this training pool is {len(parts['train'])} of them; {train_suffix}", src
        ),
        "val": SplitData(
            parts["val"],
            f"{note}: this model-selection part is {len(parts['val'])} of them; disjoint from train and test",
            src,
        ),
        "test": SplitData(
            parts["test"],
            f"{note}: this held-out part is {len(parts['test'])} of them, never "
            "trained on (scores are not directly comparable to full-test-set numbers)",
            src,
            held_out=True,
        ),
    }


def _same_length(items: Sequence[Any], completions: Sequence[str]) -> None:
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")


def _split_sort_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)
