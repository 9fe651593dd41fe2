"""Streaming (``"stream": true``): the worker's side, which generates and emits events, and the HTTP
side, which turns those events into server-sent events in OpenAI's chunk format.

The worker generates a streaming job alone with the library's
:func:`~transformer_squared.generation.generate_stream` (``model.generate`` with a streamer),
inside the same weights and seed handling as a batch; each text piece becomes a ``delta`` event
on the job's asyncio queue. Generation stops at the next token once the client has left.

Events, in order: ``("meta", decision, prompt_tokens)``, then per choice ``("start", i)``,
``("delta", i, text)``..., ``("finish", i, reason)``, and last ``("done", prompt_tokens,
completion_tokens)``; or ``("error", APIError)`` at any point.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..generation import generate_stream, seeded

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from ..svf import SVFModel
    from .engine import Engine
    from .jobs import Decision, Job


# ---------------------------------------------------------------------------------------
# The worker's side
# ---------------------------------------------------------------------------------------
def generate_events(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, svf: SVFModel | None, job: Job, closing: Callable[[], bool]
) -> None:
    """Generate the ``n`` choices of a prepared, routed streaming job one after the other, emitting events."""
    decision = job.decisions[0]
    job.emit(("meta", decision, job.prompt_tokens[0]))
    weights = contextlib.nullcontext() if svf is None else svf.weights_for([decision.expert])
    completion = 0
    with weights, seeded(job.seed, next(model.parameters()).device):
        for index in range(job.n):
            if job.cancelled or closing():
                break
            job.emit(("start", index))

            def on_text(text: str, i: int = index) -> None:
                job.emit(("delta", i, text))

            gen = generate_stream(
                model,
                tokenizer,
                job.prompts[0],
                on_text,
                max_new_tokens=job.max_new,
                temperature=job.temperature,
                top_p=job.top_p,
                stop=job.stop,
                should_stop=lambda: job.cancelled or closing(),
            )
            completion += gen.num_tokens
            job.emit(("finish", index, "stop" if gen.finished or gen.stopped else "length"))
    job.emit(("done", job.prompt_tokens[0], completion))


# ---------------------------------------------------------------------------------------
# The HTTP side
# ---------------------------------------------------------------------------------------
def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@functools.cache
def _sse_class():
    from fastapi.responses import StreamingResponse

    class SSEResponse(StreamingResponse):
        """A stream that tells the engine when it ends for any reason (even before its first byte)."""

        def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_close = on_close

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.on_close()

    return SSEResponse


class _Chunks:
    """Builds the ``data: {...}`` lines of one stream (chat chunks or text completions)."""

    def __init__(self, decision: Decision, model_name: str, chat: bool) -> None:
        from . import protocol  # pydantic: only the HTTP side needs it

        self.s = s = protocol
        self.t2 = s.T2Info(**decision.info())
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model_name
        self.chat = chat

    def __call__(
        self,
        index: int | None,
        text: str | None = None,
        finish: str | None = None,
        role: bool = False,
        usage: Any = None,
        with_t2: bool = False,
    ) -> str:
        s = self.s
        common = dict(id=self.id, created=self.created, model=self.model, usage=usage, t2=self.t2 if with_t2 else None)
        if self.chat:
            choices = (
                []
                if index is None
                else [
                    s.ChatChunkChoice(
                        index=index,
                        delta=s.Delta(role="assistant" if role else None, content=text),
                        finish_reason=finish,
                    )
                ]
            )
            obj = s.ChatCompletionChunk(choices=choices, **common)
        else:
            choices = [] if index is None else [s.CompletionChoice(index=index, text=text or "", finish_reason=finish)]
            obj = s.CompletionResponse(choices=choices, **common)
        data = obj.model_dump(exclude_none=True)
        if with_t2:
            data["t2"] = self.t2.model_dump()
        for c in data["choices"]:
            c.setdefault("finish_reason", None)
            c.setdefault("logprobs", None)
        return "data: " + dumps(data) + "\n\n"


async def _events(engine: Engine, job: Job, chunk: _Chunks, include_usage: bool) -> AsyncIterator[str]:
    chat = chunk.chat
    first_chunk = True  # the first chunk and every choice's last one carry the t2 field
    events = job.events
    assert events is not None  # stream_job gives a streaming job its queue before submitting it
    try:
        while True:
            ev = await events.get()
            kind = ev[0]
            if kind == "start":
                if chat:
                    yield chunk(ev[1], "", role=True, with_t2=first_chunk)
                    first_chunk = False
            elif kind == "delta":
                yield chunk(ev[1], ev[2], with_t2=first_chunk)
                first_chunk = False
            elif kind == "finish":
                yield chunk(ev[1], None if chat else "", finish=ev[2], with_t2=True)
            elif kind == "error":
                yield "data: " + dumps(ev[1].body()) + "\n\n"
                break
            elif kind == "done":
                if include_usage:
                    yield chunk(
                        None,
                        usage=chunk.s.Usage(prompt_tokens=ev[1], completion_tokens=ev[2], total_tokens=ev[1] + ev[2]),
                    )
                break
        yield "data: [DONE]\n\n"
    finally:
        engine.cancel(job)  # no-op when finished; stops generation when the client left


def sse_response(
    engine: Engine,
    job: Job,
    decision: Decision,
    model_name: str,
    chat: bool,
    include_usage: bool,
    headers: dict[str, str],
):
    """The ``text/event-stream`` response for a streaming job whose ``meta`` event has arrived."""
    events = _events(engine, job, _Chunks(decision, model_name, chat), include_usage)
    return _sse_class()(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", **headers},
        on_close=lambda: engine.cancel(job),
    )
