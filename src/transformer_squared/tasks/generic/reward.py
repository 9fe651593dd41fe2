"""A generic task checked by the user's own reward function: loading it from a spec, calling it safely."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...errors import T2Error
from ..base import Item
from .files import one_line
from .task import GenericTask


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
        raise T2Error(
            f"--reward {text!r}: no module {exc.name!r} (run from the folder that holds it, "
            "or give the file: path/to/file.py:function)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise T2Error(f"--reward {text!r}: importing {target!r} raised {type(exc).__name__}: {one_line(exc)}") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise T2Error(f"--reward {text!r}: {target!r} has no attribute {attr!r}")
    if not callable(fn):
        raise T2Error(f"--reward {text!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def reward_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def accepted_kwargs(fn: Callable) -> set[str] | None:
    """The keyword names ``fn`` takes, or None when it takes ``**kwargs`` (then it gets every column)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


class RewardTask(GenericTask):
    """A generic task checked by the user's reward function (TRL's signature).

    ``rewards`` returns the function's values as they are (they drive RL); ``correct_many`` counts
    a completion as correct when its reward is above ``correct_above`` (the accuracy of reports).
    A function that raises, returns the wrong number of values or a non-number raises a T2Error
    with one line naming it; inside training, rl.safe_rewards then retries item by item and
    scores the failing ones ``reward_wrong`` (reported in reward_errors.jsonl).
    """

    def __init__(
        self,
        source: Any = None,
        reward_correct: float = 1.0,
        reward_wrong: float = -1.0,
        *,
        reward: Callable | str,
        correct_above: float = 0.0,
        check: str = "normalized",
        **options: Any,
    ) -> None:
        options.setdefault("answer_required", False)
        super().__init__(source, reward_correct, reward_wrong, check=check, **options)
        self.reward_fn = load_reward(reward)
        self.reward_label = reward if isinstance(reward, str) else reward_name(self.reward_fn)
        self.correct_above = float(correct_above)
        self._accepts = accepted_kwargs(self.reward_fn)

    def _call(self, items: Sequence[Item], completions: Sequence[str]) -> list[float]:
        kwargs = {"completions": list(completions), **self.reward_columns(items)}
        if self._accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self._accepts}
        who = f"reward {self.reward_label}"
        try:
            out = self.reward_fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code; one line that names it
            raise T2Error(f"{who} raised {type(exc).__name__}: {one_line(exc)}") from exc
        try:
            values = list(out)
        except TypeError:
            raise T2Error(
                f"{who} returned a {type(out).__name__}; it must return a list of floats, one per completion"
            ) from None
        if len(values) != len(completions):
            raise T2Error(
                f"{who} returned {len(values)} values for {len(completions)} completions; it must return "
                "one float per completion"
            )
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
