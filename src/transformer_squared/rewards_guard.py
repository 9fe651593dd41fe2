"""A per-sample time budget for reward checkers, so one pathological completion cannot stall a step.

Text checkers (GSM8K, MATH, ARC, ...) are pure Python and are written to be linear in their input,
but a checker can still hit an unforeseen slow path, and a C-level regex or big-integer operation
cannot be interrupted from another thread. :func:`bounded_correct_many` therefore runs the checks in
a forked worker process, one sample after another; a sample whose check takes longer than
``seconds`` gets the wrong-answer verdict, the worker is killed and a fresh one continues with the
next sample. A check that raises is also a wrong answer. Both are reported to ``on_problem`` and
logged on the ``transformer_squared.rewards`` logger, and the batch always completes.

Code tasks already bound each check in :mod:`transformer_squared.sandbox` (a wall-clock limit that
kills the process group), so for them the batch goes straight to ``task.correct_many``.

    from transformer_squared.rewards_guard import bounded_correct_many
    oks = bounded_correct_many(task, items, completions, seconds=2.0)
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DEFAULT_SECONDS", "STARTUP_SECONDS", "bounded_correct_many", "checked_in_process"]

DEFAULT_SECONDS = 2.0
"""Default budget of one sample's check, in seconds (measured checks take well under 10 ms)."""

log = logging.getLogger("transformer_squared.rewards")

_OK, _WRONG, _RAISED = 1, 0, 2
_READY = b"R"
STARTUP_SECONDS = 30.0
"""How long a forked checker may take to start (a big trainer's fork copies page tables) before
its first sample counts as a problem; not part of any sample's budget."""
_IN_WORKER = False


def checked_in_process() -> bool:
    """True inside a guard worker: a task's ``correct_many`` must not fork again from there."""
    return _IN_WORKER


def bounded_correct_many(
    task: Any,
    items: Sequence[Any],
    completions: Sequence[str],
    seconds: float = DEFAULT_SECONDS,
    *,
    on_problem: Callable[[int, str], None] | None = None,
) -> list[bool]:
    """``task.is_correct`` for each (item, completion), each check bounded by ``seconds``.

    Returns one bool per sample. A check that overruns or raises counts as wrong; ``on_problem``
    (if given) is called with the sample's index and a one-line reason ("timeout after 2 s",
    "ValueError: ..."), and the same line is logged as a warning. Code tasks (those with a
    ``job`` method, checked in the sandbox) are passed to ``task.correct_many`` unchanged.
    Raises ValueError if the two sequences differ in length.
    """
    items, completions = list(items), list(completions)
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    if not items:
        return []
    if hasattr(task, "job") or _IN_WORKER or not hasattr(os, "fork"):
        if hasattr(task, "job"):
            return [bool(x) for x in task.correct_many(items, completions)]
        return [
            _check_one(task, item, text, i, on_problem)
            for i, (item, text) in enumerate(zip(items, completions, strict=True))
        ]

    warm_up = getattr(task, "warm_up", None)
    if callable(warm_up):  # slow first imports happen here, once, and every fork inherits them
        try:
            warm_up()
        except Exception as exc:  # noqa: BLE001 - each check then meets the same failure, reported
            log.warning("reward task warm-up failed: %s: %s", type(exc).__name__, exc)

    def problem(index: int, reason: str) -> None:
        log.warning(
            "reward check of sample %d (%s) gave the wrong-answer reward: %s",
            index,
            getattr(items[index], "id", index),
            reason,
        )
        if on_problem is not None:
            on_problem(index, reason)

    results: list[bool] = []
    while len(results) < len(items):
        start = len(results)
        try:
            pid, reader = _spawn(task, items, completions, start)
        except OSError as err:  # no fork available right now: check in process, unbounded
            log.warning("reward guard could not fork (%s); checking in process", err)
            results += [_check_one(task, items[i], completions[i], i, problem) for i in range(start, len(items))]
            break
        try:
            results += _collect(reader, start, len(items), seconds, problem)
        finally:
            os.close(reader)
            _kill_and_reap(pid)
    return results


def _check_one(task: Any, item: Any, text: str, index: int, on_problem: Callable[[int, str], None] | None) -> bool:
    try:
        return bool(task.is_correct(item, text))
    except Exception as exc:  # noqa: BLE001 - a broken check is a wrong answer, reported
        if on_problem is not None:
            on_problem(index, f"{type(exc).__name__}: {exc}"[:300])
        return False


def _spawn(task: Any, items: list[Any], completions: list[str], start: int) -> tuple[int, int]:
    """Fork a worker that checks samples ``start..`` and writes one record per sample."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked worker
        global _IN_WORKER
        _IN_WORKER = True
        code = 0
        try:
            os.close(reader)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.write(writer, _READY)  # the first sample's budget starts only now
            for i in range(start, len(items)):
                try:
                    verdict, message = (_OK if task.is_correct(items[i], completions[i]) else _WRONG), b""
                except Exception as exc:  # noqa: BLE001
                    verdict, message = _RAISED, f"{type(exc).__name__}: {exc}"[:300].encode("utf-8", "replace")
                record = struct.pack("<BH", verdict, len(message)) + message
                view = memoryview(record)
                while view:
                    view = view[os.write(writer, view) :]
        except BaseException:  # noqa: BLE001 - the parent sees the missing records
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    return pid, reader


def _read_exact(fd: int, count: int, deadline: float) -> bytes | None:
    data = b""
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _collect(reader: int, start: int, end: int, seconds: float, problem: Callable[[int, str], None]) -> list[bool]:
    """Read the worker's records; stop at the first sample that overruns (it counts as wrong)."""
    out: list[bool] = []
    if _read_exact(reader, 1, time.monotonic() + max(seconds, STARTUP_SECONDS)) != _READY:
        problem(start, "the checker did not start")
        return [False]
    for index in range(start, end):
        deadline = time.monotonic() + seconds
        head = _read_exact(reader, 3, deadline)
        if head is None:
            problem(index, f"timeout after {seconds:g} s" if time.monotonic() >= deadline else "the checker died")
            out.append(False)
            return out
        verdict, size = struct.unpack("<BH", head)
        message = _read_exact(reader, size, deadline + 1.0) if size else b""
        if verdict == _RAISED:
            problem(index, (message or b"the checker raised").decode("utf-8", "replace"))
        out.append(verdict == _OK)
    return out


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
