"""Reading a generic task's records: a JSONL/JSON/CSV/TSV file, a Hub dataset id, or Python rows.

Each record comes back with a :class:`~transformer_squared.tasks.sources.Where` that names its place
(file and line, or record number), so every error points at the record to fix.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import T2Error
from ..base import SPLIT_ALIASES
from ..sources import Where, read_user_jsonl

_HUB_ID = re.compile(r"^(?:hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class DataSource:
    """Where a generic task's records come from: ``kind`` (file, hub, python) and a printable label."""

    kind: str
    label: str
    path: Path | None = None


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def describe(data: Any) -> DataSource:
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
            raise T2Error(
                f"data file {text!r} does not exist (give a .jsonl/.json/.csv file, or a Hub dataset id "
                "such as owner/name)"
            )
        return DataSource("hub", text.removeprefix("hub:"))
    if isinstance(data, Mapping):
        return DataSource("python", f"python dict of {len(data)} splits")
    try:
        n = len(data)
    except TypeError:
        raise T2Error(
            f"cannot read records from a {type(data).__name__}: give a file path, a Hub id, a "
            "datasets.Dataset or a list of dicts"
        ) from None
    return DataSource("python", f"{type(data).__name__} of {n} records")


def read_records(data: Any, src: DataSource) -> list[tuple[Where, dict[str, Any], str | None]]:
    """``(where, record, split or None)`` for every record; T2Error naming the place when one is bad."""
    if src.kind == "file":
        assert src.path is not None  # describe() gives every file source its path
        return [(w, r, None) for w, r in _read_file(src.path)]
    if src.kind == "hub":
        try:
            import datasets
        except ImportError as exc:
            raise T2Error("a Hub dataset id needs the datasets library: run `pip install datasets`") from exc
        try:
            data = datasets.load_dataset(src.label)
        except Exception as exc:  # noqa: BLE001 - network, auth, unknown id: all user-fixable
            raise T2Error(f"could not load dataset {src.label!r} from the Hub: {one_line(exc)}") from exc
    if isinstance(data, Mapping):
        if len(data) == 1:
            data = next(iter(data.values()))
        else:
            out: list[tuple[Where, dict[str, Any], str | None]] = []
            for key, rows in data.items():
                split = split_name(key, Where(src.label), "split name")
                out += [(w, r, split) for w, r in _rows(rows, f"{src.label} [{key}]")]
            if not out:
                raise T2Error(f"{src.label}: no records")
            return out
    out = [(w, r, None) for w, r in _rows(data, src.label)]
    if not out:
        raise T2Error(f"{src.label}: no records")
    return out


def _rows(rows: Any, label: str) -> list[tuple[Where, dict[str, Any]]]:
    out: list[tuple[Where, dict[str, Any]]] = []
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
            return [
                (_RowWhere(path, i), r) if isinstance(r, dict) else _not_dict(path, i, r) for i, r in enumerate(rows)
            ]
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


def split_name(value: Any, where: Where, what: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in SPLIT_ALIASES:
        raise where.error(f"{what} {value!r} is not one of train, val (validation, dev), test, fewshot")
    return SPLIT_ALIASES[value.strip().lower()]


def default_name(src: DataSource) -> str:
    if src.kind == "file" and src.path is not None:
        stem = src.path.stem
    elif src.kind == "hub":
        stem = src.label.rsplit("/", 1)[-1]
    else:
        return "custom"
    name = re.sub(r"[^\w.+-]+", "_", stem).strip("_")[:64]
    return name or "custom"


def jsonable(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in rec.items():
        try:
            json.dumps(v)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = str(v)
    return out
