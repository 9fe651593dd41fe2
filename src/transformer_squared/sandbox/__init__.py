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
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from transformer_squared.errors import T2Error

__all__ = ["STATUSES", "SandboxLimits", "SandboxResult", "check_many", "check_program"]

STATUSES = ("passed", "failed", "error", "exited", "timeout", "killed", "sandbox_error")
"""Every value ``SandboxResult.status`` can take (see :class:`SandboxResult`)."""

# Throwaway uids for sandboxes started by root: one fresh uid per running check, so RLIMIT_NPROC
# counts only that check's processes and "kill every process of this uid" is exact.
_UID_BASE = 1_900_000_000
_UID_SPAN = 100_000_000
_live_uids: set[int] = set()
_uid_lock = threading.Lock()

_RESULT_CAP = 64 * 1024  # bytes kept from the private result channel
_DETAIL_CAP = 500  # characters of SandboxResult.detail


@dataclass
class SandboxLimits:
    """Resource limits of one sandboxed check; the defaults suit MBPP/HumanEval solutions."""

    timeout: float = 10.0
    """Wall-clock seconds for the whole check; then the process group (and its uid) is killed."""
    cpu_seconds: int = 10
    """RLIMIT_CPU of the sandboxed interpreter (and of each process it manages to fork)."""
    memory_mb: int = 1024
    """RLIMIT_AS (address space) in MiB."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: the largest file the program may write, in MiB."""
    max_processes: int = 64
    """RLIMIT_NPROC; enforced by the kernel only with the throwaway uid (root parent), see docs."""
    output_bytes: int = 64_000
    """Bytes of stdout and of stderr kept (each); the rest is read and discarded."""
    disk_mb: int = 64
    """Size of the private tmpfs working directory (root parent only; otherwise the host disk)."""

    def validate(self) -> SandboxLimits:
        """Return self, or raise T2Error naming the first limit that is not positive."""
        for name in ("timeout", "cpu_seconds", "memory_mb", "file_size_mb", "max_processes", "disk_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise T2Error(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        if not isinstance(self.output_bytes, int) or self.output_bytes < 0:
            raise T2Error(f"SandboxLimits.output_bytes must be an int >= 0, got {self.output_bytes!r}")
        return self


@dataclass
class SandboxResult:
    """Outcome of one check; ``passed`` is the reward (True only if every test ran and passed).

    ``status`` is one of :data:`STATUSES`:

    * ``passed``: the program ran and every test snippet completed without raising.
    * ``failed``: a test raised (a failed ``assert`` or any other exception).
    * ``error``: the program itself did not compile or raised before the tests ran.
    * ``exited``: the program exited (``sys.exit``, ``quit``, ``os._exit``, ...) before all tests ran.
    * ``timeout``: the wall-clock limit was hit; everything was killed.
    * ``killed``: the sandboxed process died from a signal (CPU limit, segfault, OOM killer, ...).
    * ``sandbox_error``: the sandbox itself could not run the check (this is not the program's fault).
    """

    passed: bool
    status: str
    stdout: str
    stderr: str
    seconds: float
    returncode: int | None
    detail: str = ""
    isolation: tuple[str, ...] = ()
    """The isolation layers that were active, e.g. ("uid", "netns", "pidns", "rlimits", "guard")."""


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
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1):
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


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


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


CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_child.py")
"""The file both sandboxed interpreters run (``python -I -S CHILD_SCRIPT worker|judge ...``)."""


@functools.lru_cache(maxsize=1)
def _hidden_paths() -> tuple[str, ...]:
    """Folders covered by empty read-only mounts in the worker's mount namespace: site-packages
    (the benchmarks' data and canonical solutions ship there), the project checkout, data caches."""
    import site

    candidates = list(site.getsitepackages()) + [site.getusersitepackages()]
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../transformer_squared
    root = os.path.dirname(package)
    for _ in range(4):  # the checkout: the nearest folder above the package holding pyproject.toml
        if os.path.exists(os.path.join(root, "pyproject.toml")):
            candidates.append(root)
            break
        root = os.path.dirname(root)
    candidates.append(os.path.dirname(package))
    home = os.path.expanduser("~")
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME", "T2_CACHE_DIR", "TORCH_HOME"):
        if os.environ.get(name):
            candidates.append(os.environ[name])
    candidates += [os.path.join(home, ".cache"), sys.prefix]
    keep = [os.path.realpath(p) for p in (os.path.dirname(os.__file__), sys.base_prefix, tempfile.gettempdir())]
    out: list[str] = []
    for path in candidates:
        real = os.path.realpath(path)
        if not os.path.isdir(real) or real in out or real == "/":
            continue
        if any(k == real or k.startswith(real + "/") for k in keep):
            continue  # never cover the standard library or the working directories
        out.append(real)
    # covering a folder covers what is inside it: keep only the outermost ones
    out = [p for p in out if not any(q != p and p.startswith(q + "/") for q in out)]
    return tuple(sorted(out))


def _memory_total_mb() -> int:
    try:
        return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // (1 << 20)
    except (ValueError, OSError, AttributeError):
        return 0


class _Cgroup:
    """A memory cgroup for one check (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``); root only."""

    def __init__(self, name: str, memory_mb: int) -> None:
        self.path = None
        if os.geteuid() != 0:
            return
        v2 = "/sys/fs/cgroup"
        v1 = "/sys/fs/cgroup/memory"
        try:
            if os.path.exists(os.path.join(v2, "cgroup.controllers")) and "memory" in open(
                    os.path.join(v2, "cgroup.controllers")).read().split():
                base, files = v2, (("memory.max", memory_mb << 20), ("memory.swap.max", 0))
            elif os.path.exists(os.path.join(v1, "memory.limit_in_bytes")):
                base, files = v1, (("memory.limit_in_bytes", memory_mb << 20), ("memory.memsw.limit_in_bytes", memory_mb << 20))
            else:
                return
            path = os.path.join(base, name)
            os.mkdir(path)
            self.path = path
            for filename, value in files:
                target = os.path.join(path, filename)
                if os.path.exists(target):
                    try:
                        with open(target, "w") as fh:
                            fh.write(str(value))
                    except OSError:
                        if filename in ("memory.max", "memory.limit_in_bytes"):
                            raise
        except OSError:
            self.remove()

    def add(self, pid: int) -> bool:
        """Move ``pid`` (before it runs anything untrusted) into the cgroup; False if that failed."""
        if self.path is None:
            return False
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
                fh.write(str(pid))
            return True
        except OSError:
            return False

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(200):
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError:
                with contextlib.suppress(OSError):
                    for pid in open(os.path.join(self.path, "cgroup.procs")).read().split():
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.01)
        self.path = None


def _child_env(workdir: str) -> dict[str, str]:
    """The whole environment of the child: nothing is inherited from this process."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8:backslashreplace",
        "HOME": workdir,
        "TMPDIR": workdir,
    }


def _allocate_uid() -> int:
    """A throwaway uid not used by any other check of this process."""
    with _uid_lock:
        while True:
            uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
            if uid not in _live_uids:
                _live_uids.add(uid)
                return uid


def _check(program: str, tests: list[str], limits: SandboxLimits) -> SandboxResult:
    """Run one validated check: make the working directory, run the child, clean up everything."""
    start = time.monotonic()
    uid = _allocate_uid() if os.geteuid() == 0 else None
    workdir = None
    try:
        workdir = tempfile.mkdtemp(prefix="t2-sandbox-")
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        return _run_child(program, tests, limits, uid, workdir, start)
    except OSError as err:  # could not even start: report, do not crash a whole RL batch
        return SandboxResult(False, "sandbox_error", "", "", time.monotonic() - start, None,
                             detail=f"could not run the sandbox: {err}")
    finally:
        if uid is not None:
            _kill_uid(uid)
            with _uid_lock:
                _live_uids.discard(uid)
        if workdir is not None:
            _force_rmtree(workdir)


class _Capture:
    """Bounded byte sink: keeps the first `limit` bytes, counts (and drops) the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        """Keep what fits under the limit; count everything."""
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        """The kept bytes as text, with a note when output was dropped."""
        text = bytes(self.data).decode("utf-8", errors="replace")
        dropped = self.total - len(self.data)
        if dropped:
            text += f"\n[... {dropped} more bytes truncated]"
        return text


def _spawn(role: str, fds: tuple[int, ...], workdir: str, stdout: int | None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", CHILD_SCRIPT, role, *map(str, fds)],
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=_child_env(workdir),
        pass_fds=fds,
        start_new_session=True,
    )


def _job_blob(job: dict) -> memoryview:
    blob = json.dumps(job).encode()
    return memoryview(str(len(blob)).encode() + b"\n" + blob)


def _run_child(
    program: str, tests: list[str], limits: SandboxLimits, uid: int | None, workdir: str, start: float
) -> SandboxResult:
    """Spawn the worker (program) and the judge (tests, verdict), feed them, collect the verdict."""
    memory_layers: list[str] = []
    cgroup = _Cgroup(f"t2-sandbox-{uid if uid is not None else secrets.token_hex(6)}", int(limits.memory_mb))
    max_processes = int(limits.max_processes)
    if cgroup.path is None:
        # no cgroup: keep processes x address space under half the machine
        total = _memory_total_mb()
        if total:
            max_processes = max(1, min(max_processes, total // 2 // max(1, int(limits.memory_mb))))
        memory_layers.append("memory_share")
    shared_limits = {
        "cpu_seconds": int(limits.cpu_seconds),
        "memory_mb": int(limits.memory_mb),
        "file_size_mb": int(limits.file_size_mb),
        "max_processes": max_processes,
        "disk_mb": int(limits.disk_mb),
    }
    worker_job = {"program": program, "workdir": workdir, "uid": uid, "ppid": os.getpid(),
                  "limits": shared_limits, "hide": list(_hidden_paths()) if uid is not None else []}
    secret = secrets.token_hex(16)  # marks the judge's lines; the worker never sees it
    judge_job = {"tests": tests, "limits": shared_limits, "key": secret}

    fds: list[int] = []

    def pipe() -> tuple[int, int]:
        r, w = os.pipe()
        fds.extend((r, w))
        return r, w

    w_payload_r, w_payload_w = pipe()
    setup_r, setup_w = pipe()
    request_r, request_w = pipe()
    reply_r, reply_w = pipe()
    j_payload_r, j_payload_w = pipe()
    verdict_r, verdict_w = pipe()
    child_ends = (w_payload_r, setup_w, request_r, reply_w, j_payload_r, verdict_w, request_w, reply_r)
    worker = judge = None
    try:
        worker = _spawn("worker", (w_payload_r, setup_w, request_r, reply_w), workdir, None)
        if cgroup.add(worker.pid):
            memory_layers.append("cgroup_memory")
        judge = _spawn("judge", (j_payload_r, verdict_w, request_w, reply_r), workdir, subprocess.DEVNULL)
    except BaseException:
        for proc in (worker, judge):
            if proc is not None:
                _kill_group(proc.pid)
                _reap(proc)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        cgroup.remove()
        raise
    finally:  # the children have their own copies; close ours exactly once
        for fd in child_ends:
            if fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
                fds.remove(fd)

    assert worker.stdout is not None and worker.stderr is not None and judge.stderr is not None
    out, err, setup = _Capture(limits.output_bytes), _Capture(limits.output_bytes), _Capture(_RESULT_CAP)
    judge_err, verdict_sink = _Capture(_RESULT_CAP), _Capture(_RESULT_CAP)
    sel = selectors.DefaultSelector()
    readers = {worker.stdout.fileno(): out, worker.stderr.fileno(): err, setup_r: setup,
               judge.stderr.fileno(): judge_err, verdict_r: verdict_sink}
    for fd, sink in readers.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, sink)
    # The worker's program is held back until the judge says it is armed (non-dumpable, key read):
    # no untrusted code runs while the judge's descriptors could still be opened through /proc.
    writers = {j_payload_w: _job_blob(judge_job)}
    held = {w_payload_w: _job_blob(worker_job)}
    for fd in (w_payload_w, j_payload_w):
        os.set_blocking(fd, False)
    sel.register(j_payload_w, selectors.EVENT_WRITE, None)
    judge_features: list[str] | None = None
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(judge.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")

    def pump(wait: float) -> None:
        for sel_key, _events in sel.select(wait):
            fd = sel_key.fd
            if fd in writers:
                try:
                    sent = os.write(fd, writers[fd])
                except BlockingIOError:
                    continue
                except OSError:  # child gone before reading everything
                    sent = len(writers[fd])
                writers[fd] = writers[fd][sent:]
                if not writers[fd]:
                    sel.unregister(fd)
                    del writers[fd]
                    fds.remove(fd)
                    os.close(fd)
            elif sel_key.data == "exit":
                continue
            else:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    sel_key.data.add(chunk)
                else:
                    sel.unregister(fd)
                    del readers[fd]
                if fd == verdict_r:
                    release()

    def release() -> None:
        nonlocal judge_features
        if judge_features is not None:
            return
        judge_features = _parse_armed(bytes(verdict_sink.data), secret)
        if judge_features is not None and held:
            writers.update(held)
            for fd in held:
                sel.register(fd, selectors.EVENT_WRITE, None)
            held.clear()

    deadline = start + limits.timeout
    timed_out = False
    try:
        while not _has_exited(judge.pid):
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            pump(deadline - now if pidfd is not None else min(deadline - now, 0.02))
        # The judge hung up: the worker now exits by itself (on EOF, flushing its output) or is
        # already dying (its pid-namespace relay re-raises the signal that killed the program,
        # which can take a moment on a loaded machine); give it that moment, so that its own exit
        # status and CPU time, not our SIGKILL, say why it ended.
        settle = min(deadline, time.monotonic() + 2.0)
        while not timed_out and not _has_exited(worker.pid) and time.monotonic() < settle:
            pump(0.01)
    finally:
        for proc in (worker, judge):
            _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        cgroup.remove()
        status, rusage = _reap(worker)
        _reap(judge)
        if pidfd is not None:
            sel.unregister(pidfd)
            os.close(pidfd)
        grace = time.monotonic() + 0.5
        while readers and time.monotonic() < grace:
            pump(0.05)
        sel.close()
        held.clear()
        for fd in fds:  # each parent-side descriptor is closed exactly once (fd numbers get reused)
            with contextlib.suppress(OSError):
                os.close(fd)
        for stream in (worker.stdout, worker.stderr, judge.stderr):
            stream.close()

    returncode = None if status is None else os.waitstatus_to_exitcode(status)
    cpu = None if rusage is None else rusage.ru_utime + rusage.ru_stime
    seconds = time.monotonic() - start
    isolation, setup_error = _parse_setup(bytes(setup.data))
    if isolation:
        isolation = (*isolation, *memory_layers, "judge", *(judge_features or ()))
    verdict = _parse_verdict(bytes(verdict_sink.data), secret)
    stdout, stderr = out.text(), err.text()

    if verdict is not None and verdict[0] in ("passed", "failed", "error", "exited"):
        status_name, detail = verdict
    elif setup_error is not None:
        status_name, detail = "sandbox_error", setup_error
    elif timed_out:  # the parent's own kill at the deadline: whatever the judge saw of it afterwards
        status_name, detail = "timeout", f"wall-clock timeout after {limits.timeout:g} s"
    elif verdict is not None and verdict[0] == "gone" and returncode is not None and returncode < 0:
        status_name, detail = "killed", _signal_detail(-returncode, cpu, limits)
    elif verdict is not None and verdict[0] == "gone" and isolation:
        status_name = "exited"
        detail = f"the process exited with code {returncode} before the tests finished ({verdict[1]})"
    elif not isolation:
        status_name = "sandbox_error"
        detail = "the sandbox did not start: " + (_last_line(stderr) or f"exit code {returncode}")
    else:
        status_name = "sandbox_error"
        detail = (verdict[1] if verdict else "") or "the judge gave no verdict: " + (
            _last_line(judge_err.text()) or "no output")
    return SandboxResult(
        passed=status_name == "passed",
        status=status_name,
        stdout=stdout,
        stderr=stderr,
        seconds=seconds,
        returncode=returncode,
        detail=detail[:_DETAIL_CAP],
        isolation=isolation,
    )


def _parse_setup(data: bytes) -> tuple[tuple[str, ...], str | None]:
    """(isolation layers, setup error) from the first line of the worker's setup channel.

    That line is written before any untrusted code runs; everything after it is ignored.
    """
    first = data.split(b"\n", 1)[0]
    if first.startswith(b"setup "):
        with contextlib.suppress(ValueError, TypeError):
            return tuple(str(x) for x in json.loads(first[6:])), None
    elif first.startswith(b"setup-failed "):
        return (), "sandbox setup failed: " + first[13:].decode("utf-8", "replace")
    return (), None


def _judge_lines(data: bytes, secret: str):
    """The JSON objects on the verdict channel that carry this check's key, in order.

    Only the judge knows the key; any other line (should something else reach the pipe) is ignored.
    """
    for raw in data.split(b"\n"):
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if type(message) is dict and message.get("key") == secret:
            yield message


def _parse_armed(data: bytes, secret: str) -> list[str] | None:
    """The judge's isolation features once it has said it is armed, else None."""
    for message in _judge_lines(data, secret):
        if "armed" in message:
            return [str(x) for x in message["armed"]] if isinstance(message["armed"], list) else []
    return None


def _parse_verdict(data: bytes, secret: str) -> tuple[str, str] | None:
    """The judge's (status, detail), or None if it wrote none."""
    for message in _judge_lines(data, secret):
        if "status" in message:
            return str(message["status"]), str(message.get("detail", ""))
    return None


def _last_line(text: str) -> str:
    """Last non-empty line of text (usually the exception line of a traceback)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _signal_detail(signum: int, cpu: float | None, limits: SandboxLimits) -> str:
    """Human reason for a death by signal, naming the limit that most likely caused it."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGXCPU or (
        signum == signal.SIGKILL and cpu is not None and cpu >= 0.9 * limits.cpu_seconds - 0.05  # tick granularity
    ):
        return f"killed by {name}: CPU time limit ({limits.cpu_seconds} s) exceeded"
    if signum == signal.SIGXFSZ:
        return f"killed by {name}: file size limit ({limits.file_size_mb} MiB) exceeded"
    return f"killed by {name}"


def _has_exited(pid: int) -> bool:
    """True once the child has terminated; it stays a zombie (unreaped) so its pgid stays valid."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    """SIGKILL the child's whole process group (it is its own session leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _reap(proc: subprocess.Popen) -> tuple[int | None, object | None]:
    """Wait (bounded) for the killed child; return its raw wait status and rusage."""
    give_up = time.monotonic() + 5.0
    while True:
        try:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return None, None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, rusage
        if time.monotonic() > give_up:
            return None, None
        time.sleep(0.005)


def _uid_pids(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real, effective, saved or fs uid is `uid`."""
    pids = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return pids
    for name in names:
        if name.isdigit() and _proc_has_uid(int(name), uid):
            pids.append(int(name))
    return pids


def _proc_has_uid(pid: int, uid: int) -> bool:
    """Whether /proc/<pid> is a live process running with `uid` (False if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            text = fh.read()
    except OSError:
        return False
    uids: list[str] = []
    state = b""
    for line in text.splitlines():
        if line.startswith(b"Uid:"):
            uids = line.split()[1:]
        elif line.startswith(b"State:"):
            state = line.split()[1] if len(line.split()) > 1 else b""
    return state not in (b"Z", b"X") and str(uid).encode() in uids


def _kill_uid(uid: int) -> bool:
    """SIGKILL every process of the throwaway `uid` (escapes from the process group included).

    Each pid is pinned with a pidfd and re-checked before the signal, so a recycled pid is never hit.
    Returns True when none is left.
    """
    for _ in range(200):
        pids = _uid_pids(uid)
        if not pids:
            return True
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                if _proc_has_uid(pid, uid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                continue
            try:
                if _proc_has_uid(pid, uid):
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
        time.sleep(0.005)
    return not _uid_pids(uid)


def _force_rmtree(path: str) -> None:
    """Delete the working directory even if the program made parts of it read-only."""

    def fix(_func: object, failed: str, _exc: object) -> None:
        for target in (os.path.dirname(failed), failed):
            with contextlib.suppress(OSError):
                mode = os.lstat(target).st_mode
                if stat.S_ISDIR(mode):
                    os.chmod(target, 0o700)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(failed) and not os.path.islink(failed):
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)

    for _ in range(3):
        if not os.path.lexists(path):
            return
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=fix)
        else:
            shutil.rmtree(path, onerror=fix)
