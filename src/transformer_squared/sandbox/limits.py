"""What a check may use (:class:`SandboxLimits`) and what it reports (:class:`SandboxResult`)."""

from __future__ import annotations

from dataclasses import dataclass

from transformer_squared.errors import T2Error

STATUSES = ("passed", "failed", "error", "exited", "timeout", "killed", "sandbox_error")
"""Every value ``SandboxResult.status`` can take (see :class:`SandboxResult`)."""


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
