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
import inspect
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


@functools.lru_cache(maxsize=1)
def _bootstrap_code() -> str:
    """Source handed to ``python -c``: the self-contained :func:`_sandbox_child` plus its call."""
    return inspect.getsource(_sandbox_child) + "\n_sandbox_child()\n"


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


def _run_child(
    program: str, tests: list[str], limits: SandboxLimits, uid: int | None, workdir: str, start: float
) -> SandboxResult:
    """Spawn the sandboxed interpreter, feed it the job, collect its output and verdict."""
    token = secrets.token_hex(32).encode()
    job = {
        "program": program,
        "tests": tests,
        "workdir": workdir,
        "uid": uid,
        "ppid": os.getpid(),
        "limits": {
            "cpu_seconds": int(limits.cpu_seconds),
            "memory_mb": int(limits.memory_mb),
            "file_size_mb": int(limits.file_size_mb),
            "max_processes": int(limits.max_processes),
            "disk_mb": int(limits.disk_mb),
        },
    }
    blob = json.dumps(job).encode()
    # The token travels last and stays in the pipe until the bootstrap has run every test.
    payload = memoryview(str(len(blob)).encode() + b"\n" + blob + token)

    payload_r, payload_w = os.pipe()
    result_r, result_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-s", "-P", "-c", _bootstrap_code(), str(payload_r), str(result_w)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_child_env(workdir),
            pass_fds=(payload_r, result_w),
            start_new_session=True,
        )
    except BaseException:
        os.close(payload_w)
        os.close(result_r)
        raise
    finally:  # the child has its own copies; close ours exactly once (fd numbers get reused)
        os.close(payload_r)
        os.close(result_w)

    assert proc.stdout is not None and proc.stderr is not None
    out, err, res = _Capture(limits.output_bytes), _Capture(limits.output_bytes), _Capture(_RESULT_CAP)
    sel = selectors.DefaultSelector()
    readers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, result_r: res}
    for fd, sink in readers.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, sink)
    os.set_blocking(payload_w, False)
    sel.register(payload_w, selectors.EVENT_WRITE, None)
    writer_open = True
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")

    def pump(wait: float) -> None:
        nonlocal writer_open
        nonlocal payload
        for key, _events in sel.select(wait):
            fd = key.fd
            if fd == payload_w:
                try:
                    sent = os.write(fd, payload)
                except BlockingIOError:
                    continue
                except OSError:  # child gone before reading everything
                    sent = len(payload)
                payload = payload[sent:]
                if not payload:
                    sel.unregister(fd)
                    os.close(fd)
                    writer_open = False
            elif key.data == "exit":
                continue
            else:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    key.data.add(chunk)
                else:
                    sel.unregister(fd)
                    del readers[fd]

    deadline = start + limits.timeout
    timed_out = False
    try:
        while not _has_exited(proc.pid):
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            pump(deadline - now if pidfd is not None else min(deadline - now, 0.02))
    finally:
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        status, rusage = _reap(proc)
        # Drain what is still buffered; anything that escaped the kill may hold a pipe open,
        # so give up after a short grace period.
        grace = time.monotonic() + 0.5
        if pidfd is not None:
            sel.unregister(pidfd)
            os.close(pidfd)
        while readers and time.monotonic() < grace:
            pump(0.05)
        sel.close()
        for fd in (result_r, *([payload_w] if writer_open else [])):
            with contextlib.suppress(OSError):
                os.close(fd)
        proc.stdout.close()
        proc.stderr.close()

    returncode = None if status is None else os.waitstatus_to_exitcode(status)
    cpu = None if rusage is None else rusage.ru_utime + rusage.ru_stime
    seconds = time.monotonic() - start
    isolation, setup_error, verdict = _parse_results(bytes(res.data), token)
    stdout, stderr = out.text(), err.text()

    if verdict is not None and verdict[0] == "passed":
        status_name, detail = "passed", ""
    elif verdict is not None:
        status_name, detail = verdict
    elif timed_out:
        status_name, detail = "timeout", f"wall-clock timeout after {limits.timeout:g} s"
    elif setup_error is not None or not isolation:
        status_name = "sandbox_error"
        detail = setup_error or ("the sandbox did not start: " + (_last_line(stderr) or f"exit code {returncode}"))
    elif returncode is not None and returncode < 0:
        status_name, detail = "killed", _signal_detail(-returncode, cpu, limits)
    else:
        status_name = "exited"
        detail = f"the process exited with code {returncode} before the tests finished"
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


def _parse_results(data: bytes, token: bytes) -> tuple[tuple[str, ...], str | None, tuple[str, str] | None]:
    """Split the result channel into (isolation layers, setup error, last authenticated verdict).

    The first line is written by the bootstrap before any untrusted code runs, so it is trusted as
    is; later lines count only if they start with the token (the program may write junk here).
    """
    lines = data.split(b"\n")
    isolation: tuple[str, ...] = ()
    setup_error = None
    first = lines[0] if lines else b""
    if first.startswith(b"setup "):
        with contextlib.suppress(ValueError, TypeError):
            isolation = tuple(str(x) for x in json.loads(first[6:]))
    elif first.startswith(b"setup-failed "):
        setup_error = "sandbox setup failed: " + first[13:].decode("utf-8", "replace")
    verdict = None
    prefix = token + b" "
    for line in lines[1:]:
        if line.startswith(prefix):
            parts = line[len(prefix):].split(b" ", 1)
            kind = parts[0].decode("ascii", "replace")
            if kind not in STATUSES:
                continue
            try:
                detail = bytes.fromhex(parts[1].decode("ascii")).decode("utf-8", "replace") if len(parts) > 1 else ""
            except ValueError:
                detail = ""
            verdict = (kind, detail)
    return isolation, setup_error, verdict


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
        signum == signal.SIGKILL and cpu is not None and cpu >= limits.cpu_seconds - 0.05
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


# --------------------------------------------------------------------------------------------
# Child side. Everything below runs inside the sandboxed interpreter as ``python -c``; it must be
# self-contained (stdlib imports inside the function) because its source is sent verbatim.
# --------------------------------------------------------------------------------------------


def _sandbox_child() -> None:  # pragma: no cover - runs only inside the sandboxed interpreter
    """Bootstrap of the sandboxed interpreter: lock the process down, then run program and tests.

    Order matters: read the job, set up namespaces/uid/rlimits/guard while nothing untrusted has
    run, announce the active layers on the result pipe, then execute the program and each test.
    Only after the last test does it read the token (still in the payload pipe) and write it back.
    """
    import builtins
    import json
    import os
    import resource
    import signal
    import sys
    import traceback
    import types

    payload_fd, result_fd = int(sys.argv[1]), int(sys.argv[2])
    # Private references, taken before any untrusted code can replace the module attributes.
    _read, _write, _exit, _close = os.read, os.write, os._exit, os.close
    _exec, _compile = builtins.exec, builtins.compile
    _BaseException, _SystemExit, _str, _type, _len = BaseException, SystemExit, str, type, len
    _settrace, _setprofile = sys.settrace, sys.setprofile
    _stdout, _stderr = sys.stdout, sys.stderr
    _print_exception = traceback.print_exception
    features = []

    def fail_setup(message):
        with_newline = ("setup-failed " + message).replace("\n", " ") + "\n"
        try:
            _write(result_fd, with_newline.encode("utf-8", "replace"))
        finally:
            _exit(3)

    def read_exact(count):
        chunks, got = [], 0
        while got < count:
            chunk = _read(payload_fd, min(1 << 16, count - got))
            if not chunk:
                raise EOFError("payload truncated")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    try:
        header = b""
        while not header.endswith(b"\n"):
            byte = _read(payload_fd, 1)
            if not byte or len(header) > 20:
                raise EOFError("bad payload header")
            header += byte
        job = json.loads(read_exact(int(header)))
    except Exception as err:
        fail_setup(f"could not read the job: {err!r}")
    limits = job["limits"]
    workdir = job["workdir"]
    uid = job["uid"]

    libc = None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        libc.unshare.argtypes = [ctypes.c_int]
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    except Exception:
        libc = None

    PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
    CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
    MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
    MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24

    def prctl(option, value):
        return libc is not None and libc.prctl(option, value, 0, 0, 0) == 0

    def mount(source, target, fstype, flags, data):
        def enc(text):
            return None if text is None else os.fsencode(text)

        if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), target)

    # Die with the parent (the pytest/trainer thread that spawned us), and never dump core.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != job["ppid"]:
        _exit(3)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    pid_ns = False
    if uid is not None and libc is not None:
        if libc.unshare(CLONE_NEWNET) == 0:
            features.append("netns")  # a fresh network namespace: no interface is even up
        if libc.unshare(CLONE_NEWNS) == 0:
            try:
                mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing propagates to the host
                features.append("mountns")
            except OSError:
                pass
        if "mountns" in features:
            try:
                with open("/proc/self/mountinfo", "rb") as fh:
                    mounts = fh.read().decode("utf-8", "replace").splitlines()
                mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      f"size={limits['disk_mb']}m,nr_inodes=10000,mode=0700,uid={uid},gid={uid}")
                features.append("tmpfs_workdir")
            except OSError:
                mounts = []
            keep = {"nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
            root_ro = False
            for line in mounts:  # every host mount becomes read-only in this namespace
                fields = line.split()
                if len(fields) < 6:
                    continue
                point = fields[4]
                for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                    point = point.replace(code, char)
                if point in ("/dev", "/dev/pts", workdir) or point.startswith(("/proc", "/sys")):
                    continue
                flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
                for option in fields[5].split(","):
                    flags |= keep.get(option, 0)
                try:
                    mount(None, point, None, flags, None)
                    root_ro = root_ro or point == "/"
                except OSError:
                    pass
            if root_ro:
                features.append("readonly_fs")
            os.chdir(workdir)
        if libc.unshare(CLONE_NEWPID) == 0:
            pid_ns = True

    if pid_ns:
        # The first child becomes pid 1 of the new namespace: when it dies, the kernel kills every
        # process it left behind. This (root) process only waits and relays the exit status.
        child = os.fork()
        if child != 0:
            _close(payload_fd)
            _close(result_fd)
            while True:
                try:
                    _, status = os.waitpid(child, 0)
                    break
                except InterruptedError:
                    continue
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                try:
                    if sig not in (signal.SIGKILL, signal.SIGSTOP):
                        signal.signal(sig, signal.SIG_DFL)
                    os.kill(os.getpid(), sig)  # die the same way, so the parent sees the signal
                finally:
                    _exit(128 + sig)
            _exit(os.waitstatus_to_exitcode(status))
        features.append("pidns")
        if "mountns" in features:
            try:
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
                features.append("procfs")
            except OSError:
                pass

    private_fds = {payload_fd, result_fd}
    if uid is not None:
        # Keep handles on the interpreter's import directories: the throwaway uid may not be able
        # to traverse their parents (e.g. /root/.pyenv), but /proc/self/fd/N still reaches them.
        path_fds = {}
        for entry in list(sys.path):
            if isinstance(entry, str) and entry and os.path.isdir(entry):
                try:
                    path_fds[entry] = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    pass
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as err:
            fail_setup(f"could not drop privileges to uid {uid}: {err}")
        if os.getuid() != uid or os.geteuid() != uid:
            fail_setup("privileges were not dropped")
        features.append("uid")
        moved = {}
        for entry, fd in path_fds.items():
            if os.access(entry, os.R_OK | os.X_OK):
                _close(fd)
            else:
                moved[entry] = f"/proc/self/fd/{fd}"
                private_fds.add(fd)

        def relocate(path):
            for old, new in moved.items():
                if path == old or path.startswith(old + "/"):
                    return new + path[len(old):]
            return path

        if moved:
            sys.path[:] = [relocate(p) if isinstance(p, str) else p for p in sys.path]
            for module in list(sys.modules.values()):
                package_path = getattr(module, "__path__", None)
                if isinstance(package_path, list):
                    package_path[:] = [relocate(p) if isinstance(p, str) else p for p in package_path]
            sys.path_importer_cache.clear()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change; parent is the relay
    if prctl(PR_SET_NO_NEW_PRIVS, 1):
        features.append("no_new_privs")

    try:
        mib = 1024 * 1024
        for which, value in (
            (resource.RLIMIT_CPU, limits["cpu_seconds"]),
            (resource.RLIMIT_AS, limits["memory_mb"] * mib),
            (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
            (resource.RLIMIT_NPROC, limits["max_processes"]),
            (resource.RLIMIT_NOFILE, 256),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(which, (value, value))  # hard == soft: cannot be raised back
        features.append("rlimits")
    except (OSError, ValueError) as err:
        fail_setup(f"could not set rlimits: {err}")

    # ---- Python-level guard (best effort; the kernel layers above are the real boundary) ----
    import _io
    import _posixsubprocess
    import _socket
    import io
    import posix
    import shutil
    import socket
    import subprocess

    realpath, fspath, fsdecode = os.path.realpath, os.fspath, os.fsdecode
    home = realpath(os.getcwd())
    try:
        own_proc = os.readlink("/proc/self")
    except OSError:
        own_proc = _str(os.getpid())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def resolve(path):
        path = fspath(path)
        if isinstance(path, bytes):
            path = fsdecode(path)
        return realpath(path)

    def writable(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            real = resolve(path)
        except (TypeError, ValueError, OSError):
            return False
        return real == home or real.startswith(home + "/") or real == "/dev/null"

    def readable(path):
        if isinstance(path, int):
            return True
        try:
            parts = resolve(path).split("/")
        except (TypeError, ValueError, OSError):
            return True  # let the real call raise its own error
        return not (len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_proc)

    def denied(name, why=None):
        message = f"{name}: {why}" if why else f"{name} is disabled in the sandbox"

        def blocked(*args, **kwargs):
            raise PermissionError(message)

        blocked.__name__ = name.rpartition(".")[2]
        return blocked

    def path_checked(name, original, positions):
        def guarded(*args, **kwargs):
            for key in ("dir_fd", "src_dir_fd", "dst_dir_fd"):
                if kwargs.get(key) is not None:
                    raise PermissionError(f"{name} with {key} is disabled in the sandbox")
            paths = [args[i] for i in positions if i < len(args)]
            paths += [kwargs[k] for k in ("path", "src", "dst", "name") if k in kwargs]
            for path in paths:
                if not writable(path):
                    raise PermissionError(f"{name}({path!r}) outside the sandbox directory is disabled")
            return original(*args, **kwargs)

        guarded.__name__ = original.__name__
        return guarded

    # The bootstrap's own descriptors (job/token pipe, result pipe, import dirs) stay out of reach
    # of plain os calls: a program that closes every fd still gets its verdict delivered.
    def fd_checked(name, original):
        def guarded(fd, *args, **kwargs):
            if fd in private_fds:
                raise PermissionError(f"os.{name}({fd}) on a sandbox descriptor is disabled")
            return original(fd, *args, **kwargs)

        guarded.__name__ = original.__name__
        return guarded

    for name in ("read", "readv", "pread", "write", "writev", "pwrite", "close", "dup", "fstat",
                 "set_blocking", "set_inheritable", "lseek", "ftruncate", "fchmod", "fchown", "fdopen",
                 "sendfile", "splice", "fsync"):
        for target in (os, posix):
            original = getattr(target, name, None)
            if original is not None:
                setattr(target, name, fd_checked(name, original))
    original_dup2, original_closerange = posix.dup2, posix.closerange

    def guarded_dup2(fd, fd2, *args, **kwargs):
        if fd in private_fds or fd2 in private_fds:
            raise PermissionError("os.dup2 on a sandbox descriptor is disabled")
        return original_dup2(fd, fd2, *args, **kwargs)

    def guarded_closerange(low, high):
        for fd in sorted(private_fds):
            if low <= fd < high:
                original_closerange(low, fd)
                low = fd + 1
        if low < high:
            original_closerange(low, high)

    for target in (os, posix):
        target.dup2, target.closerange = guarded_dup2, guarded_closerange
    fcntl_module = sys.modules.get("fcntl")
    if fcntl_module is None:
        import fcntl as fcntl_module
    for name in ("fcntl", "ioctl", "flock", "lockf"):
        original = getattr(fcntl_module, name, None)
        if original is not None:
            setattr(fcntl_module, name, fd_checked(f"fcntl.{name}", original))

    original_open = _io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, int) and file in private_fds:
            raise PermissionError(f"opening sandbox descriptor {file} is disabled")
        if isinstance(mode, _str) and any(c in mode for c in "wax+") and not writable(file):
            raise PermissionError(f"writing {file!r} outside the sandbox directory is disabled")
        if not readable(file):
            raise PermissionError(f"reading {file!r} is disabled in the sandbox")
        return original_open(file, mode, *args, **kwargs)

    original_os_open = posix.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and (dir_fd is not None or not writable(path)):
            raise PermissionError(f"writing {path!r} outside the sandbox directory is disabled")
        if not readable(path):
            raise PermissionError(f"reading {path!r} is disabled in the sandbox")
        return original_os_open(path, flags, mode, dir_fd=dir_fd)

    for target in (builtins, io, _io):
        target.open = guarded_open
    for target in (os, posix):
        target.open = guarded_os_open

    blocked_calls = (
        "system popen fork forkpty vfork kill killpg tgkill pidfd_open execv execve execl execle execlp "
        "execlpe execvp execvpe spawnv spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe "
        "posix_spawn posix_spawnp setuid setgid seteuid setegid setreuid setregid setresuid setresgid "
        "setgroups setsid setpgid setpgrp chroot"
    ).split()
    for name in blocked_calls:
        for target in (os, posix):
            if hasattr(target, name):
                setattr(target, name, denied(f"os.{name}"))
    single_path = "remove unlink rmdir removedirs chmod lchmod chown lchown truncate mkfifo mknod utime mkdir makedirs setxattr removexattr chflags lchflags"
    for name in single_path.split():
        for target in (os, posix):
            original = getattr(target, name, None)
            if original is not None:
                setattr(target, name, path_checked(f"os.{name}", original, (0,)))
    for name, positions in (("rename", (0, 1)), ("renames", (0, 1)), ("replace", (0, 1)), ("link", (0, 1)), ("symlink", (1,))):
        for target in (os, posix):
            original = getattr(target, name, None)
            if original is not None:
                setattr(target, name, path_checked(f"os.{name}", original, positions))

    def guarded_rmtree(path, *args, **kwargs):
        if not writable(path):
            raise PermissionError(f"shutil.rmtree({path!r}) outside the sandbox directory is disabled")
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                full = os.path.join(root, name)
                (os.unlink if os.path.islink(full) else os.rmdir)(full)
        os.rmdir(path)

    shutil.rmtree = guarded_rmtree
    shutil.move = path_checked("shutil.move", shutil.move, (0, 1))
    subprocess.Popen = denied("subprocess.Popen")
    _posixsubprocess.fork_exec = denied("_posixsubprocess.fork_exec")

    network_off = "network access is disabled in the sandbox"

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError(network_off)

    class NoRawSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError(network_off)

    socket.socket = socket.SocketType = NoSocket
    _socket.socket = _socket.SocketType = NoRawSocket
    for name in ("socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "fromshare"):
        for target in (socket, _socket):
            if hasattr(target, name):
                setattr(target, name, denied(f"socket.{name}", network_off))
    for name in ("ctypes", "_ctypes", "cffi", "_cffi_backend"):
        sys.modules[name] = None  # `import ctypes` now raises ImportError
    features.append("guard")

    # ---- Job ----
    sources = {"<solution>": job["program"]}
    tests = job["tests"]
    for index in range(len(tests)):
        sources[f"<test {index + 1}>"] = tests[index]
    import linecache

    for filename, source in sources.items():
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        test_codes = tuple(
            _compile(tests[i], f"<test {i + 1}>", "exec", dont_inherit=True) for i in range(len(tests))
        )
    except BaseException as err:
        fail_setup(f"a test does not compile: {err!r}")
    n_tests = _len(test_codes)
    module = types.ModuleType("solution")
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    sys.modules["solution"] = module
    builtins_dict = builtins.__dict__
    builtins_snapshot = dict(builtins_dict)
    del job, tests

    def restore():
        # dict methods cannot be monkeypatched, so this undoes any change to builtins.
        builtins_dict.clear()
        builtins_dict.update(builtins_snapshot)
        namespace["__builtins__"] = builtins
        _settrace(None)
        _setprofile(None)

    def describe(exc, prefix):
        """One line: what was raised and where (the source line of the program or test)."""
        try:
            name = _str(_type(exc).__name__)
            try:
                message = _str(exc)
            except _BaseException:
                message = "<unprintable>"
            where = ""
            tb = exc.__traceback__
            while tb is not None:
                filename = tb.tb_frame.f_code.co_filename
                if filename in sources:
                    lines = sources[filename].splitlines()
                    lineno = tb.tb_lineno
                    text = lines[lineno - 1].strip() if 0 < lineno <= _len(lines) else ""
                    where = f" at {filename[1:-1]} line {lineno}: {text}"
                tb = tb.tb_next
            if isinstance(exc, SyntaxError) and exc.lineno:
                where = f" at line {exc.lineno}"
            text = f"{prefix}{name}{': ' + message if message else ''}{where}"
            return text[:400]
        except _BaseException:
            return prefix + "an exception that could not be described"

    def exit_code(exc):
        try:
            return _str(exc.code)[:100]
        except _BaseException:
            return "?"

    def show(exc):
        try:
            tb = exc.__traceback__
            _print_exception(_type(exc), exc, tb.tb_next if tb is not None else None, file=_stderr)
        except _BaseException:
            pass

    def report(kind, detail):
        """Flush output, then authenticate the verdict with the token and exit immediately."""
        for stream in (_stdout, _stderr):
            try:
                stream.flush()
            except _BaseException:
                pass
        token = b""
        while True:
            chunk = _read(payload_fd, 256)
            if not chunk:
                break
            token += chunk
        try:
            hexed = _str.encode(detail, "utf-8", "backslashreplace")[:2000].hex()
        except _BaseException:
            hexed = ""
        _write(result_fd, token + b" " + _str.encode(kind) + b" " + _str.encode(hexed) + b"\n")
        _exit(0)

    _write(result_fd, b"setup " + json.dumps(features).encode() + b"\n")

    # ---- Untrusted code from here on ----
    try:
        code = _compile(sources["<solution>"], "<solution>", "exec", dont_inherit=True)
    except _BaseException as err:
        report("error", describe(err, "the program does not compile: "))
    try:
        _exec(code, namespace)
    except _SystemExit as err:
        restore()
        report("exited", f"the program called exit({exit_code(err)}) before the tests ran")
    except _BaseException as err:
        restore()
        show(err)
        report("error", describe(err, "the program raised "))
    index = 0
    while index < n_tests:
        restore()
        try:
            _exec(test_codes[index], namespace)
        except _SystemExit as err:
            restore()
            report("exited", f"exit({exit_code(err)}) was called during test {index + 1} of {n_tests}")
        except _BaseException as err:
            restore()
            show(err)
            report("failed", describe(err, f"test {index + 1} of {n_tests} failed: "))
        index += 1
    restore()
    report("passed", "")
