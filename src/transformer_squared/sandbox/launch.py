"""Starting and ending the sandbox's processes (parent side): the child script and its
environment, the throwaway uid, the memory cgroup, the paths hidden from the worker, spawning,
reaping, and killing everything a check left behind (its process group, every process of its uid,
its working directory).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from resource import struct_rusage

# Throwaway uids for sandboxes started by root: one fresh uid per running check, so RLIMIT_NPROC
# counts only that check's processes and "kill every process of this uid" is exact.
_UID_BASE = 1_900_000_000
_UID_SPAN = 100_000_000
_live_uids: set[int] = set()
_uid_lock = threading.Lock()

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
            if (
                os.path.exists(os.path.join(v2, "cgroup.controllers"))
                and "memory" in open(os.path.join(v2, "cgroup.controllers")).read().split()
            ):
                base, files = v2, (("memory.max", memory_mb << 20), ("memory.swap.max", 0))
            elif os.path.exists(os.path.join(v1, "memory.limit_in_bytes")):
                base, files = (
                    v1,
                    (("memory.limit_in_bytes", memory_mb << 20), ("memory.memsw.limit_in_bytes", memory_mb << 20)),
                )
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


def _release_uid(uid: int) -> None:
    """Kill whatever still runs as ``uid``, then let another check use it."""
    _kill_uid(uid)
    with _uid_lock:
        _live_uids.discard(uid)


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


def _reap(proc: subprocess.Popen) -> tuple[int | None, struct_rusage | None]:
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
    pids: list[int] = []
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
    uids: list[bytes] = []
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
