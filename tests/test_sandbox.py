"""Tests of the code sandbox: hostile programs end with reward 0 and leave the host intact.

Timeouts are short (1-3 s) so the file runs in a few seconds on 2 cores. Tests that bypass the
Python-level guard on purpose (to exercise the kernel layers) run only where those layers exist
(this process is root); everywhere else they are skipped, not faked.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from transformer_squared.errors import T2Error
from transformer_squared.sandbox import (
    _UID_BASE,
    _UID_SPAN,
    STATUSES,
    SandboxLimits,
    SandboxResult,
    check_many,
    check_program,
)

FAST = SandboxLimits(timeout=3.0, cpu_seconds=3, memory_mb=512, file_size_mb=4, max_processes=16)
IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="kernel isolation layers need a root parent")

ADD_OK = "def add(a, b):\n    return a + b\n"
ADD_BAD = "def add(a, b):\n    return a - b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]

# Bypasses the guard's `sys.modules["ctypes"] = None` to reach libc directly (kernel layers only).
UNGUARDED_LIBC = textwrap.dedent(
    """
    import sys
    for _name in ("ctypes", "_ctypes"):
        sys.modules.pop(_name, None)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    """
)


def run(program: str, tests: list[str] | None = None, **limits: object) -> SandboxResult:
    """check_program with FAST limits overridden by keyword."""
    merged = SandboxLimits(**{**FAST.__dict__, **limits})
    return check_program(textwrap.dedent(program), tests or ["assert True"], limits=merged)


def live_processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if fields.get("State", "").split()[:1] != ["Z"] and int(fields["Uid"].split()[0]) == uid:
            found.append(int(name))
    return found


def assert_nothing_left(stdout: str) -> None:
    """The program printed "uid N" first; no process of that throwaway uid may survive the check."""
    uid = int(stdout.split("uid ", 1)[1].split()[0])
    if IS_ROOT:
        assert _UID_BASE <= uid < _UID_BASE + _UID_SPAN
        assert not live_processes_of(uid)


# ---------------------------------------------------------------- positive: rewards are right


def test_correct_mbpp_solution_passes() -> None:
    result = run(ADD_OK + "print('hello from the program')", ADD_TESTS)
    assert result.passed and result.status == "passed", result
    assert result.detail == ""
    assert result.returncode == 0
    assert "hello from the program" in result.stdout
    assert result.status in STATUSES


def test_wrong_solution_fails_with_detail() -> None:
    result = run(ADD_BAD, ADD_TESTS)
    assert not result.passed
    assert result.status == "failed"
    assert "test 1 of 3" in result.detail and "assert add(1, 2) == 3" in result.detail
    assert "AssertionError" in result.detail


def test_failing_later_test_is_reported() -> None:
    program = "def add(a, b):\n    return a + b if a != 2 else 0\n"
    result = run(program, ADD_TESTS)
    assert result.status == "failed"
    assert "test 3 of 3" in result.detail


HUMANEVAL_PROMPT = '''
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    """
'''
HUMANEVAL_GOOD = """    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
"""
HUMANEVAL_BAD = "    return False\n"
HUMANEVAL_TEST = """

METADATA = {"author": "jt", "dataset": "test"}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
"""


def test_humaneval_check_candidate_passes_and_fails() -> None:
    tests = [HUMANEVAL_TEST, "check(has_close_elements)"]
    good = check_program(HUMANEVAL_PROMPT + HUMANEVAL_GOOD, tests, limits=FAST)
    assert good.passed, good
    bad = check_program(HUMANEVAL_PROMPT + HUMANEVAL_BAD, tests, limits=FAST)
    assert not bad.passed and bad.status == "failed"
    assert "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True" in bad.detail


def test_program_errors_are_reported() -> None:
    syntax = run("def add(a, b:\n    return a\n", ADD_TESTS)
    assert syntax.status == "error" and "does not compile" in syntax.detail
    runtime = run("x = 1 / 0\n", ADD_TESTS)
    assert runtime.status == "error" and "ZeroDivisionError" in runtime.detail
    assert "x = 1 / 0" in runtime.detail


def test_stdlib_imports_and_own_files_work() -> None:
    """The unprivileged child still imports the stdlib and may use its own working directory."""
    program = """
    import collections, decimal, fractions, heapq, itertools, math, os, re, shutil, statistics, tempfile
    def f():
        with open("scratch.txt", "w") as fh:
            fh.write("data")
        os.makedirs("sub/dir", exist_ok=True)
        os.rename("scratch.txt", "sub/dir/moved.txt")
        with open("sub/dir/moved.txt") as fh:
            text = fh.read()
        with tempfile.NamedTemporaryFile("w", delete=False) as tmp:
            tmp.write("x")
        os.remove(tmp.name)
        shutil.rmtree("sub")
        return text, fractions.Fraction(1, 2) + 0, statistics.median([3, 1, 2]), os.listdir(".")
    """
    result = run(program, ["assert f() == ('data', 0.5, 2, [])"])
    assert result.passed, (result.detail, result.stderr)


def test_working_directory_is_removed_even_if_made_read_only() -> None:
    program = """
    import os
    os.makedirs("locked/inner")
    with open("locked/inner/f.txt", "w") as fh:
        fh.write("x")
    os.chmod("locked/inner", 0)
    os.chmod("locked", 0o500)
    print(os.getcwd())
    """
    result = run(program)
    assert result.passed, result
    cwd = result.stdout.strip()
    assert "t2-sandbox-" in cwd
    assert not os.path.exists(cwd)


def test_invalid_arguments_raise_t2error() -> None:
    with pytest.raises(T2Error, match="empty"):
        check_program(ADD_OK, [])
    with pytest.raises(T2Error, match="program"):
        check_program(b"print(1)", ["assert True"])  # type: ignore[arg-type]
    with pytest.raises(T2Error, match="list"):
        check_program(ADD_OK, "assert add(1, 2) == 3")  # type: ignore[arg-type]
    with pytest.raises(T2Error, match="test 2 does not compile"):
        check_program(ADD_OK, ["assert True", "assert ("])
    with pytest.raises(T2Error, match="timeout"):
        check_program(ADD_OK, ADD_TESTS, limits=SandboxLimits(timeout=0))
    with pytest.raises(T2Error, match="job 1"):
        check_many([(ADD_OK, ADD_TESTS), (ADD_OK, [])])


# ---------------------------------------------------------------- resource abuse


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout=1.0, cpu_seconds=10)
    elapsed = time.monotonic() - start
    assert not result.passed and result.status == "timeout"
    assert 0.9 <= elapsed < 3.0


def test_cpu_limit_kills_before_wall_clock() -> None:
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout=6.0, cpu_seconds=1)
    assert not result.passed and result.status == "killed", result
    assert "CPU time limit" in result.detail
    assert time.monotonic() - start < 4.0


def test_fork_bomb_through_os_fork_is_refused() -> None:
    result = run("import os\nprint('uid', os.getuid())\nwhile True:\n    os.fork()\n", timeout=2.0)
    assert not result.passed and result.status == "error"
    assert "disabled" in result.detail
    assert_nothing_left(result.stdout)


@root_only
def test_fork_bomb_past_the_guard_is_contained() -> None:
    """A real fork bomb (libc fork, guard bypassed) hits RLIMIT_NPROC, then everything is killed."""
    program = UNGUARDED_LIBC + textwrap.dedent(
        """
        import os, time
        os.write(1, b"uid %d forking\\n" % os.getuid())
        for _ in range(8):  # at most 2**8 processes even if no limit applied
            if libc.fork() < 0:
                os.write(1, b"fork refused\\n")
        time.sleep(60)
        """
    )
    start = time.monotonic()
    result = run(program, timeout=2.0, max_processes=8)
    # contained either way: by the deadline, or earlier by the per-check memory cgroup (8 forked
    # interpreters come close to its limit, and on a loaded machine the kernel may kill one first)
    assert not result.passed and result.status in ("timeout", "killed"), result
    assert "forking" in result.stdout
    assert "fork refused" in result.stdout  # the kernel limit, not the guard, stopped it
    assert time.monotonic() - start < 5.0
    assert_nothing_left(result.stdout)
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0  # host can still fork


def test_memory_bomb_is_stopped() -> None:
    program = """
    big = bytearray(1024 ** 3)  # 1 GiB at once: fine on the host, not under a 256 MiB RLIMIT_AS
    hog = []
    for _ in range(100):  # then 1 GB more, step by step (bounded even if no limit applied)
        hog.append(b"x" * 10 ** 7)
    """
    result = run(program, memory_mb=256)
    assert not result.passed
    assert result.status in ("error", "killed")
    if result.status == "error":
        assert "MemoryError" in result.detail


def test_huge_output_is_capped_and_parent_memory_bounded() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    program = """
    import sys
    chunk = "x" * 65536
    while True:
        sys.stdout.write(chunk)
        sys.stderr.write(chunk)
    """
    result = run(program, timeout=2.0, output_bytes=1000)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert not result.passed and result.status in ("timeout", "killed"), result  # see the fork-bomb test
    assert result.stdout.startswith("x" * 1000)
    assert len(result.stdout) < 1100 and len(result.stderr) < 1100
    assert "truncated" in result.stdout
    assert after - before < 100 * 1024  # the parent did not buffer the flood


def test_ten_gigabyte_file_is_stopped_by_file_size_limit() -> None:
    free_before = shutil.disk_usage("/tmp").free
    program = """
    import os
    block = b"\\0" * (1 << 20)
    with open("big.bin", "wb") as fh:
        for _ in range(10 * 1024):
            fh.write(block)
    """
    result = run(program, file_size_mb=1)
    assert not result.passed and result.status == "error"
    assert "File too large" in result.detail or "Errno 27" in result.detail, result.detail
    assert shutil.disk_usage("/tmp").free > free_before - (1 << 30)


# ---------------------------------------------------------------- escaping the sandbox


def deletion_program(canary: str) -> str:
    """A program that tries every common way to delete, move or overwrite `canary` and its folder."""
    folder = os.path.dirname(canary)
    return textwrap.dedent(
        f"""
        import os, pathlib, shutil, subprocess
        CANARY = {canary!r}
        attempts = [
            lambda: os.remove(CANARY),
            lambda: os.unlink(CANARY),
            lambda: pathlib.Path(CANARY).unlink(),
            lambda: os.rename(CANARY, CANARY + ".moved"),
            lambda: shutil.rmtree({folder!r}),
            lambda: os.system("rm -rf " + {folder!r}),
            lambda: subprocess.run(["rm", "-f", CANARY]),
            lambda: open({folder!r} + "/planted.txt", "w").write("x"),
            lambda: open(CANARY, "w").write("overwritten"),
        ]
        DONE = []
        for number, attempt in enumerate(attempts):
            try:
                attempt()
                DONE.append(number)
            except Exception as err:
                print(type(err).__name__, err)
        print("DONE =", DONE)
        try:
            os.stat(CANARY)
            GONE = False
        except FileNotFoundError:
            GONE = True
        except OSError:  # cannot even look (0700 folder): certainly not deleted
            GONE = False
        """
    )


@pytest.fixture(params=["tmp_path", "world_writable"])
def canary(request, tmp_path):
    """A canary file in pytest's tmp_path (0700) or in a world-writable folder under /tmp, where
    only the sandbox (guard, read-only mounts) protects it."""
    if request.param == "tmp_path":
        folder = tmp_path
    else:
        folder = Path(tempfile.mkdtemp(prefix="t2-canary-"))
        folder.chmod(0o777)
        request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    path = folder / "canary.txt"
    path.write_text("alive")
    path.chmod(0o666)
    return path


def test_cannot_delete_or_write_files_outside(canary) -> None:
    result = run(deletion_program(str(canary)), ["assert GONE"])
    assert not result.passed and result.status == "failed", result
    assert "DONE = []" in result.stdout  # every attempt raised (os.system and subprocess included)
    assert canary.read_text() == "alive"
    assert sorted(p.name for p in canary.parent.iterdir()) == ["canary.txt"]


@root_only
def test_cannot_delete_outside_even_past_the_guard(canary) -> None:
    program = UNGUARDED_LIBC + f"rc = libc.unlink({str(canary).encode()!r})\nprint('unlink returned', rc)\n"
    result = run(program, ["assert rc == 0"])
    assert not result.passed and result.status == "failed"
    assert "unlink returned -1" in result.stdout  # the call went through and the kernel refused it
    assert canary.read_text() == "alive"


def test_parent_environment_is_not_inherited(monkeypatch) -> None:
    secret = "t2-secret-value-8d1f"
    monkeypatch.setenv("T2_SANDBOX_TEST_SECRET", secret)
    program = f"""
    import glob, os
    print(dict(os.environ))
    SEEN = {secret!r} in repr(dict(os.environ))
    for path in glob.glob("/proc/*/environ") + ["/proc/%d/environ" % os.getppid()]:
        try:
            with open(path, "rb") as fh:
                if {secret!r}.encode() in fh.read():
                    SEEN = True
        except OSError:
            pass
    """
    result = run(program, ["assert SEEN"])
    assert not result.passed and result.status == "failed"
    assert secret not in result.stdout and secret not in result.stderr
    assert "PATH" in result.stdout  # the program did print its environment


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 of this (host) network namespace."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.3)
    yield server
    server.close()


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        server.accept()


def test_socket_connection_fails(listener) -> None:
    port = listener.getsockname()[1]
    program = f"""
    import socket
    s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
    s.sendall(b"leak")
    CONNECTED = True
    """
    result = run(program, ["assert CONNECTED"])
    assert not result.passed and result.status == "error"
    assert "network access is disabled" in result.detail
    assert_no_connection(listener)


@root_only
def test_socket_past_the_guard_has_no_network(listener) -> None:
    port = listener.getsockname()[1]
    program = f"""
    import _socket
    raw = _socket.socket.__mro__[1]  # the real socket type behind the guard's subclass
    s = raw(_socket.AF_INET, _socket.SOCK_STREAM)
    print("socket created", flush=True)
    s.settimeout(1)
    s.connect(("127.0.0.1", {port}))
    CONNECTED = True
    """
    result = run(program, ["assert CONNECTED"])
    assert not result.passed and result.status == "error"
    assert "socket created" in result.stdout
    assert "unreachable" in result.detail.lower(), result.detail
    assert_no_connection(listener)


# ---------------------------------------------------------------- faking the reward


@pytest.mark.parametrize(
    "exit_call",
    [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "quit()",
        "exit()",
        "raise SystemExit",
        "import os\nos.abort()",
    ],
)
def test_exit_before_tests_does_not_pass(exit_call: str) -> None:
    result = run(ADD_BAD + exit_call + "\n", ADD_TESTS)
    assert not result.passed
    assert result.status in ("exited", "killed")


def test_exit_inside_tested_function_does_not_pass() -> None:
    program = "import os, sys\ndef add(a, b):\n    os._exit(0)\n"
    assert run(program, ADD_TESTS).status == "exited"
    program = "import sys\ndef add(a, b):\n    sys.exit(0)\n"
    result = run(program, ADD_TESTS)
    assert result.status == "exited" and "test 1 of 3" in result.detail


OVERRIDES = {
    "global AssertionError": "AssertionError = None\n",
    "builtins.AssertionError": "import builtins\nbuiltins.AssertionError = type('AssertionError', (Exception,), {})\n",
    "builtins.print": "import builtins\nbuiltins.print = lambda *a, **k: None\n",
    "builtins.__import__": "import builtins\ndef _no(*a, **k):\n    raise SystemExit(0)\nbuiltins.__import__ = _no\n",
    "__builtins__ dict": "__builtins__ = {}\n",
    "builtins wiped": "import builtins\nbuiltins.__dict__.clear()\n",
    "core builtins": (
        "import builtins\nfor _n in ('exec', 'compile', 'len', 'isinstance', 'str', 'type', 'BaseException',"
        " 'SystemExit', 'enumerate', 'range'):\n    setattr(builtins, _n, None)\n"
    ),
    "excepthook": "import sys\nsys.excepthook = lambda *a: None\n",
    "tracer": "import sys\nsys.settrace(lambda *a: None)\n",
    "forged pass lines": (
        "import os\nfor _fd in range(3, 64):\n    for _line in (b'passed\\n', b'setup []\\n', b' passed \\n'):\n"
        "        try:\n            os.write(_fd, _line)\n        except OSError:\n            pass\n"
    ),
    "token theft": (
        "import os\nstolen = b''\nfor _fd in range(3, 64):\n    try:\n        os.set_blocking(_fd, False)\n"
        "        stolen += os.read(_fd, 4096)\n    except OSError:\n        pass\n"
        "for _fd in range(3, 64):\n    for _piece in stolen.split():\n        try:\n"
        "            os.write(_fd, _piece + b' passed \\n')\n        except OSError:\n            pass\n"
    ),
    "closes every descriptor": "import os\nos.closerange(3, 4096)\nfor _fd in range(3, 256):\n    try:\n        os.close(_fd)\n    except OSError:\n        pass\n",
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_overriding_builtins_does_not_make_failing_tests_pass(name: str) -> None:
    result = run(ADD_BAD + OVERRIDES[name], ADD_TESTS)
    assert not result.passed, (name, result)
    assert result.status in ("failed", "exited", "error"), result
    control = run(ADD_OK + OVERRIDES[name], ADD_TESTS)  # the same hack with a right answer
    if name not in ("builtins wiped", "core builtins", "__builtins__ dict", "builtins.__import__"):
        assert control.passed, (name, control)


def test_builtins_used_by_the_tests_are_restored() -> None:
    """Shadowing a builtin used by the tests inside builtins is undone before the tests run."""
    program = "import builtins\nbuiltins.abs = lambda x: 0\ndef area(r):\n    return 0.0\n"
    result = run(program, ["assert abs(area(1.0) - 3.14159) < 1e-3"])
    assert not result.passed and result.status == "failed"


# ---------------------------------------------------------------- isolation report and check_many


@root_only
def test_root_parent_gets_every_kernel_layer() -> None:
    result = run(ADD_OK, ADD_TESTS)
    assert result.passed
    for layer in ("uid", "netns", "mountns", "pidns", "readonly_fs", "tmpfs_workdir", "rlimits", "guard"):
        assert layer in result.isolation, (layer, result.isolation)
    probe = run("import os\nUID = os.getuid()\nPID = os.getpid()\n", ["assert UID != 0 and PID == 1"])
    assert probe.passed, probe


def test_check_many_runs_in_parallel_and_keeps_order() -> None:
    loop = ("while True:\n    pass\n", ["assert True"])
    jobs = [
        (ADD_OK, ADD_TESTS),
        loop,
        (ADD_BAD, ADD_TESTS),
        (ADD_OK, ["assert add(2, 3) == 5"]),
        loop,
        ("import sys\nsys.exit(0)\n", ["assert True"]),
        (ADD_OK, ["assert add(0, 0) == 1"]),
        ("x = 1\n", ["assert x == 1"]),
    ]
    limits = SandboxLimits(timeout=2.0, cpu_seconds=5)
    start = time.monotonic()
    results = check_many(jobs, limits=limits, max_workers=2)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == [
        "passed",
        "timeout",
        "failed",
        "passed",
        "timeout",
        "exited",
        "failed",
        "passed",
    ]
    assert [r.passed for r in results] == [True, False, False, True, False, False, False, True]
    assert elapsed < 8.0  # far below 8 jobs x 2 s run one after another
    assert check_many([]) == []
