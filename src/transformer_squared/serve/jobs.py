"""What the event loop hands to the engine's worker: a :class:`Job`, and what comes back.

A job is filled in by the worker (rendered prompts, token counts, routing decisions) and
answered through the event loop that submitted it: ``resolve``/``fail`` set its asyncio future,
``emit`` puts a streaming event on its queue; all three are safe to call from the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..experts import Expert
from ..generation import is_greedy
from .errors import server_error


@dataclass
class Decision:
    """Which weights answer one prompt, and why (the response's ``t2`` field)."""

    label: str
    expert: Expert | None
    strategy: str
    description: str
    fallback: bool = False

    def info(self) -> dict[str, Any]:
        mixture = self.expert.meta.get("mixture") if self.expert is not None else None
        return {
            "expert": None if self.expert is None else self.expert.name,
            "route": self.description,
            "label": self.label,
            "strategy": self.strategy,
            "fallback": self.fallback,
            "mixture": mixture if isinstance(mixture, dict) else None,
        }

    @property
    def header(self) -> str:
        return "base" if self.expert is None else self.expert.name


@dataclass
class Choice:
    """One generated completion of a job."""

    text: str
    tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass(eq=False)
class Job:
    """One HTTP request waiting for (or in) generation.

    Chat requests carry ``messages`` (rendered with the chat template on the worker thread, so
    the tokenizer is only ever used by one thread); completion requests carry ``texts``.
    """

    route_texts: list[str]
    n: int
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    pin: Decision | None
    strategy: str
    stream: bool = False
    messages: list[dict[str, str]] | None = None
    texts: list[str] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    events: asyncio.Queue | None = None
    cancelled: bool = False
    # filled by the worker
    prompts: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    max_new: int = 0
    decisions: list[Decision] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.route_texts) * self.n

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature, self.top_p)

    @property
    def sampling_key(self) -> tuple:
        """Jobs batch together only when one ``generate`` call can serve them all."""
        if self.greedy:
            return ("greedy",)
        if self.seed is not None:  # reproducible only when generated alone
            return ("seeded", id(self))
        return ("sample", self.temperature, self.top_p)

    # -- answering (called from the worker thread) ----------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        if self.loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(fn)

    def resolve(self, result: Any) -> None:
        def _set() -> None:
            if self.future is not None and not self.future.done():
                self.future.set_result(result)

        self._call(_set)

    def fail(self, error: BaseException) -> None:
        err = server_error(error)
        if self.stream:
            self.emit(("error", err))
            return

        def _set() -> None:
            if self.future is not None and not self.future.done():
                self.future.set_exception(err)

        self._call(_set)

    def emit(self, event: tuple) -> None:
        if self.events is not None:
            events = self.events
            self._call(lambda: events.put_nowait(event))


@dataclass
class JobResult:
    """Per prompt: its token count, its decision and its ``n`` choices."""

    prompt_tokens: list[int]
    decisions: list[Decision]
    choices: list[list[Choice]]
