"""Command-line options built from a dataclass's fields, so that each option is declared once: as a field.

:func:`add_dataclass_arguments` turns fields into ``--options``: the flag is the field name with
dashes, the default is the field's, ``help`` comes from ``field(metadata={"help": ...})`` and
extra option strings from ``metadata["flags"]`` (e.g. ``("-k",)``). The type decides the rest:

* ``Literal["a", "b"]`` (or ``Literal[...] | None``): ``choices=["a", "b"]``;
* ``int`` / ``float`` (or ``... | None``): parsed as such; ``list[str]``: a comma-separated list;
* ``bool``: a flag that flips the default: ``--name`` for a False default, ``--no-name`` for a
  True one (stored under the field's name either way).

:func:`config_from_args` builds the dataclass back from the parsed namespace.
:func:`remember_defaults` / :func:`fill_defaults` tell which options the user gave.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union


def comma_list(value: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _members(hint: Any) -> tuple[Any, ...]:
    """The types of a union without None (the type itself when it is not a union)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def argument_for(f: dataclasses.Field, hint: Any) -> tuple[list[str], dict[str, Any]]:
    """The option strings and ``add_argument`` keyword arguments of one dataclass field."""
    name = f.name.replace("_", "-")
    default = _field_default(f)
    kwargs: dict[str, Any] = {"dest": f.name}
    if f.metadata.get("help") is not None:
        kwargs["help"] = f.metadata["help"]
    members = _members(hint)
    if members == (bool,):
        kwargs.update(action="store_false" if default else "store_true", default=bool(default))
        return [f"--no-{name}" if default else f"--{name}", *f.metadata.get("flags", ())], kwargs
    kwargs["default"] = default
    literal = next((typing.get_args(m) for m in members if typing.get_origin(m) is Literal), None)
    if literal is not None:
        kwargs["choices"] = list(literal)
        if not isinstance(literal[0], str):
            kwargs["type"] = type(literal[0])
    elif any(typing.get_origin(m) is list for m in members):
        kwargs["type"] = comma_list
    elif not any(m in (str, os.PathLike) for m in members):
        if len(members) != 1 or members[0] not in (int, float):
            raise TypeError(f"no command-line form for field {f.name!r} of type {hint!r}; pass one in overrides")
        kwargs["type"] = members[0]
    return [f"--{name}", *f.metadata.get("flags", ())], kwargs


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    names: Iterable[str],
    overrides: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Add an option for each field of ``cls`` in ``names`` (in that order) to ``parser`` (or a group).

    ``overrides[name]`` updates that option's ``add_argument`` keyword arguments (e.g. another
    default, ``required=True``, ``nargs``); a required option gets no default.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        flags, kwargs = argument_for(fields[name], hints[name])
        kwargs.update((overrides or {}).get(name, {}))
        if kwargs.get("required"):
            kwargs.pop("default", None)
        parser.add_argument(*flags, **kwargs)


def config_from_args(
    args: argparse.Namespace, cls: type, convert: dict[str, Callable[[Any], Any]] | None = None
) -> Any:
    """``cls`` made from the namespace's values of its fields (a field absent from ``args`` keeps its default).

    ``convert[name]`` maps the command-line value to the field's (e.g. ``"0: all"`` to None).
    """
    convert = convert or {}
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.name in convert:
            value = convert[f.name](value)
        elif isinstance(value, list):
            value = list(value)  # never share a default list between configs
        values[f.name] = value
    return cls(**values)


def remember_defaults(parser: argparse.ArgumentParser) -> None:
    """Keep the defaults aside, so that :func:`fill_defaults` knows which options the user gave.

    Call it last, after every option is added: each default is replaced by ``SUPPRESS`` (an option
    not given is absent from the namespace) and stored under ``_defaults``.
    """
    defaults = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help") or action.default is argparse.SUPPRESS:
            continue
        defaults[action.dest] = action.default
        action.default = argparse.SUPPRESS
    parser.set_defaults(_defaults=defaults)


def fill_defaults(args: argparse.Namespace) -> set[str]:
    """Put the defaults back into ``args``; the names (dests) of the options given on the command line."""
    defaults = getattr(args, "_defaults", {})
    given = {dest for dest in defaults if hasattr(args, dest)}
    for dest, value in defaults.items():
        if dest not in given:
            setattr(args, dest, value)
    return given


__all__ = [
    "add_dataclass_arguments",
    "argument_for",
    "comma_list",
    "config_from_args",
    "fill_defaults",
    "remember_defaults",
]
