"""Sandbox for untrusted, model-written Python: run a program plus its tests, get a 0/1 reward.

Each check runs in a fresh interpreter (``sys.executable``) with a wall-clock timeout that kills
the whole process group, rlimits (CPU, address space, file size, processes), a throwaway working
directory, a minimal environment, closed stdin, capped output and, when this process is root,
kernel isolation: network/mount/pid namespaces, a read-only view of the host file system and a
throwaway unprivileged uid.  A Python-level guard (no deletes outside the working directory, no
subprocesses, no sockets) is installed on top as a best-effort second layer.

Reward integrity: a check only passes when the bootstrap, after running every test, writes a
secret token that the parent handed over a pipe; exiting early (``sys.exit``, ``os._exit``,
``quit``) or swallowing/redefining exceptions and builtins therefore cannot fake a pass.
See docs/sandbox.md for the threat model and what is best effort.

    from transformer_squared.sandbox import check_program
    result = check_program("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3"])
    reward = float(result.passed)

Layout: :mod:`.limits` (SandboxLimits, SandboxResult), :mod:`.run` (one check, start to end),
:mod:`.launch` (processes, uids, cgroups, cleanup), :mod:`.verdict` (reading the children's
channels, deciding the status). The two child interpreters run ``_child.py`` by path, which loads
its siblings (``_worker.py``, ``_lockdown.py``, ``_guard.py``, ``_judge.py``, ``_names.py``,
``_codec.py``) by path too: they use the standard library only and import nothing from this package.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from transformer_squared.errors import T2Error

# the uid range and the child script stay importable from here (tests and tools use them)
from .launch import _UID_BASE as _UID_BASE
from .launch import _UID_SPAN as _UID_SPAN
from .launch import CHILD_SCRIPT as CHILD_SCRIPT
from .limits import STATUSES, SandboxLimits, SandboxResult
from .run import _check

__all__ = ["STATUSES", "SandboxLimits", "SandboxResult", "check_many", "check_program"]


def check_program(program: str, tests: list[str], *, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `program` (source) then each test snippet (source, e.g. "assert f(1) == 2" or a HumanEval
    ``def check(candidate): ...`` followed by "check(entry_point)") in a fresh sandboxed process.

    The tests run in the program's namespace, in order; the check passes only if all of them
    complete. Raises T2Error for bad arguments (non-string sources, no tests, a test that does not
    compile, bad limits); everything the program does is reported in the result instead.
    """
    limits = (limits or SandboxLimits()).validate()
    _validate_job(program, tests)
    return _check(program, list(tests), limits)


def check_many(
    jobs: list[tuple[str, list[str]]],
    *,
    limits: SandboxLimits | None = None,
    max_workers: int | None = None,
) -> list[SandboxResult]:
    """Run many checks in parallel with bounded workers (default: number of cores); results in input
    order; one hung child never blocks the others beyond its own timeout.

    All jobs are validated before any runs, so a bad job raises T2Error without side effects.
    """
    limits = (limits or SandboxLimits()).validate()
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise T2Error(f"max_workers must be a positive int or None, got {max_workers!r}")
    checked: list[tuple[str, list[str]]] = []
    for index, job in enumerate(jobs):
        if not isinstance(job, tuple | list) or len(job) != 2:
            raise T2Error(f"job {index} must be a (program, tests) pair, got {type(job).__name__}")
        program, tests = job
        try:
            _validate_job(program, tests)
        except T2Error as err:
            raise T2Error(f"job {index}: {err}") from None
        checked.append((program, list(tests)))
    if not checked:
        return []
    workers = min(max_workers or os.cpu_count() or 1, len(checked))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t2-sandbox") as pool:
        return list(pool.map(lambda job: _check(job[0], job[1], limits), checked))


def _validate_job(program: object, tests: object) -> None:
    """Raise T2Error unless program is a str and tests a non-empty list of compilable str."""
    if not isinstance(program, str):
        raise T2Error(f"program must be Python source (str), got {type(program).__name__}")
    if isinstance(tests, str) or not isinstance(tests, list | tuple):
        raise T2Error(f"tests must be a list of Python source strings, got {type(tests).__name__}")
    if not tests:
        raise T2Error("tests is empty: a check without tests would pass anything")
    for index, test in enumerate(tests):
        if not isinstance(test, str):
            raise T2Error(f"test {index + 1} must be Python source (str), got {type(test).__name__}")
        try:  # tests are trusted data: compiling them here only parses, it runs nothing
            compile(test, f"<test {index + 1}>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as err:
            raise T2Error(f"test {index + 1} does not compile: {err}") from None
