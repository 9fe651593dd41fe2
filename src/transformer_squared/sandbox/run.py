"""One check, start to end (parent side): make the working directory, start the worker and the
judge, feed them their jobs, pump their output and channels until the judge is done or the clock
runs out, then kill and clean up everything and build the :class:`SandboxResult`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import subprocess
import tempfile
import time

from .launch import (
    _allocate_uid,
    _Cgroup,
    _force_rmtree,
    _has_exited,
    _hidden_paths,
    _job_blob,
    _kill_group,
    _kill_uid,
    _memory_total_mb,
    _reap,
    _release_uid,
    _spawn,
)
from .limits import SandboxLimits, SandboxResult
from .verdict import _parse_armed, _parse_setup, _parse_verdict, decide

_RESULT_CAP = 64 * 1024  # bytes kept from the private result channel
_DETAIL_CAP = 500  # characters of SandboxResult.detail


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
        return SandboxResult(
            False, "sandbox_error", "", "", time.monotonic() - start, None, detail=f"could not run the sandbox: {err}"
        )
    finally:
        if uid is not None:
            _release_uid(uid)
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
    worker_job = {
        "program": program,
        "workdir": workdir,
        "uid": uid,
        "ppid": os.getpid(),
        "limits": shared_limits,
        "hide": list(_hidden_paths()) if uid is not None else [],
    }
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
    readers = {
        worker.stdout.fileno(): out,
        worker.stderr.fileno(): err,
        setup_r: setup,
        judge.stderr.fileno(): judge_err,
        verdict_r: verdict_sink,
    }
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

    status_name, detail = decide(
        verdict, setup_error, isolation, timed_out, returncode, cpu, limits, stderr, judge_err.text()
    )
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
