"""Reading what the children reported (parent side) and turning it into a status.

The worker's setup channel says which isolation layers took effect (or why setup failed); the
judge's verdict channel carries JSON lines marked with the check's secret key: "armed" (then the
worker may get its program) and the verdict. :func:`decide` weighs those against what the parent
saw itself (its own timeout, the worker's exit status and CPU time).
"""

from __future__ import annotations

import contextlib
import json
import signal

from .limits import SandboxLimits


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


def decide(
    verdict: tuple[str, str] | None,
    setup_error: str | None,
    isolation: tuple[str, ...],
    timed_out: bool,
    returncode: int | None,
    cpu: float | None,
    limits: SandboxLimits,
    stderr: str,
    judge_stderr: str,
) -> tuple[str, str]:
    """The check's (status, detail): the judge's verdict when it gave one, else the likeliest cause."""
    if verdict is not None and verdict[0] in ("passed", "failed", "error", "exited"):
        return verdict
    if setup_error is not None:
        return "sandbox_error", setup_error
    if timed_out:  # the parent's own kill at the deadline: whatever the judge saw of it afterwards
        return "timeout", f"wall-clock timeout after {limits.timeout:g} s"
    if verdict is not None and verdict[0] == "gone" and returncode is not None and returncode < 0:
        return "killed", _signal_detail(-returncode, cpu, limits)
    if verdict is not None and verdict[0] == "gone" and isolation:
        return "exited", f"the process exited with code {returncode} before the tests finished ({verdict[1]})"
    if not isolation:
        return "sandbox_error", "the sandbox did not start: " + (_last_line(stderr) or f"exit code {returncode}")
    return "sandbox_error", (verdict[1] if verdict else "") or "the judge gave no verdict: " + (
        _last_line(judge_stderr) or "no output"
    )
