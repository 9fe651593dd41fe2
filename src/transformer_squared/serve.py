"""An OpenAI-compatible HTTP server that picks an expert for every request (``t2 serve``).

Shape: FastAPI handlers validate a request, turn it into a :class:`Job` and hand it to the
:class:`Engine`, whose one worker thread owns the model. The worker takes the waiting jobs
together (up to ``max_batch`` rows), routes the ones the server's strategy decides (the first
pass, :class:`~transformer_squared.adapt.AdaptiveModel`), and answers them in one mixed-expert
batch (``generate(..., svf=svf, experts=[...])``); results go back to the event loop through
asyncio futures. The queue is bounded: when it is full the server answers 429 at once.

Streaming requests are generated alone, token by token (a transformers streamer on the worker
thread feeding an asyncio queue), so that the stream can stop as soon as the client leaves.

Build the app with :func:`create_app` (in-process tests, custom launchers); the CLI loads the
model and experts and runs it under uvicorn.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (``request: Request``, imported inside create_app) at definition time.
import asyncio
import contextlib
import hmac
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import T2Error
from .experts import Expert

log = logging.getLogger("transformer_squared.serve")

# Strategies a request (or the server) may use; "oracle" and "fewshot" need more than a request.
SERVE_STRATEGIES = ("prompt", "classifier", "none")
MAX_ROWS_PER_REQUEST = 32  # prompts × n of one request
BODY_TIMEOUT_S = 30.0  # default seconds to receive a whole request body before answering 408
DRAIN_LIMIT = 64 << 20  # an oversize body is read and dropped up to this size, so the 413 arrives


# ---------------------------------------------------------------------------------------
# Errors in the OpenAI shape
# ---------------------------------------------------------------------------------------
class APIError(Exception):
    """An HTTP error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _ClientGone(Exception):
    """The client hung up while its request body was being read."""


def _server_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, T2Error):
        return APIError(400, str(exc))
    return APIError(500, f"the server failed on this request ({type(exc).__name__}); see the server log",
                    type="server_error", code="internal_error")


# ---------------------------------------------------------------------------------------
# Jobs: what the event loop hands to the worker
# ---------------------------------------------------------------------------------------
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
        return {"expert": None if self.expert is None else self.expert.name, "route": self.description,
                "label": self.label, "strategy": self.strategy, "fallback": self.fallback,
                "mixture": mixture if isinstance(mixture, dict) else None}

    @property
    def header(self) -> str:
        return "base" if self.expert is None else self.expert.name


@dataclass
class Choice:
    """One generated completion of a job."""

    text: str
    tokens: int
    finish_reason: str


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
        from .generation import is_greedy

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
        err = _server_error(error)
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


# ---------------------------------------------------------------------------------------
# The engine: one worker thread owning the model
# ---------------------------------------------------------------------------------------
def _base_model_id(model) -> str:
    name = str(getattr(model, "t2_model_name", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
               or "model")
    path = Path(name)
    return path.name if (name.startswith(("/", ".", "~")) or path.exists()) and path.name else name


def _context_length(model) -> int:
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


class Engine:
    """Owns the model on one worker thread; batches jobs; routes; generates; hands results back.

    Everything that touches the model or the tokenizer runs on the worker thread (tokenizers
    are not safe to share between threads that change their padding settings).
    """

    def __init__(self, model, tokenizer, svf=None, experts: Sequence[Expert] = (), strategy: str | None = None,
                 classifier: Expert | None = None, *, model_id: str | None = None, max_batch: int = 8,
                 queue_size: int = 64, max_tokens_limit: int = 512, context_length: int | None = None,
                 batch_wait_s: float = 0.005, threads: int | None = None) -> None:
        for name, value in (("max_batch", max_batch), ("queue_size", queue_size),
                            ("max_tokens_limit", max_tokens_limit), ("threads", threads or 1)):
            if not isinstance(value, int) or value < 1:
                raise T2Error(f"{name} must be a positive integer, got {value!r}")
        experts = list(experts)
        if experts and svf is None:
            raise T2Error("serving experts needs the SVFModel wrapping the model")
        strategy = strategy or ("prompt" if experts else "none")
        if strategy not in SERVE_STRATEGIES:
            raise T2Error(f"unknown adaptation strategy {strategy!r}; use one of {', '.join(SERVE_STRATEGIES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.svf = svf
        self.strategy = strategy
        self.classifier = classifier
        self.model_id = model_id or _base_model_id(model)
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.max_tokens_limit = max_tokens_limit
        self.context_length = context_length or _context_length(model)
        self.batch_wait_s = batch_wait_s
        self.threads = threads
        self.created = int(time.time())
        self.experts: dict[str, Expert] = {}
        for e in experts:
            if e.name in self.experts or e.name in (self.model_id, "default"):
                raise T2Error(f"two models would share the id {e.name!r}; rename one expert (meta 'name')")
            e.check_compatible(svf, strict=True)
            self.experts[e.name] = e
        self._adaptive: dict[str, Any] = {}
        self.labels: dict[str, str] = {}  # expert name -> domain label
        self._build_strategies(experts)
        if self.strategy not in self.strategies:
            raise T2Error(f"strategy {self.strategy!r} is not available: "
                          + ("it needs --experts" if self.strategy == "prompt"
                             else "it needs --experts and the classification expert (--classifier DIR)"))
        self.aliases = {label: name for name, label in self.labels.items()
                        if label not in self.experts and label != self.model_id}
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.busy = False
        self.stats = {"requests": 0, "rows": 0, "batches": 0, "max_batch_rows": 0, "streams": 0,
                      "rejected_queue_full": 0, "dropped_before_start": 0, "streams_stopped": 0, "errors": 0}

    def _build_strategies(self, experts: list[Expert]) -> None:
        """One AdaptiveModel per strategy this server offers (adapt.py is imported lazily)."""
        self.strategies = ["none"]
        if not experts and self.classifier is None:
            return
        try:
            from .adapt import AdaptiveModel, expert_domain
        except ImportError as exc:  # pragma: no cover - while adapt.py is being written
            if experts:
                log.warning("adaptive routing unavailable (%s); experts can only be pinned", exc)
            self.labels = {e.name: e.name for e in experts}
            return
        self.labels = {e.name: expert_domain(e) for e in experts}
        if experts:
            self._adaptive["prompt"] = AdaptiveModel(self.svf, self.tokenizer, experts, strategy="prompt")
            self.strategies.append("prompt")
        if self.classifier is not None and experts:
            self._adaptive["classifier"] = AdaptiveModel(self.svf, self.tokenizer, experts, strategy="classifier",
                                                         classifier=self.classifier)
            self.strategies.append("classifier")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._work, name="t2-serve-worker", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, fail the waiting ones (503), stop streams, join the worker."""
        with self._cond:
            self._closing = True
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in pending:
            job.fail(APIError(503, "the server is shutting down", type="server_error", code="unavailable"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the front side (event loop) --------------------------------------------------------
    def resolve_model(self, model: str | None, adapt: str | None) -> tuple[Decision | None, str]:
        """The pinned expert (or None) and the strategy for a request's ``model`` / ``adapt``."""
        pin = None
        if model and model not in (self.model_id, "default"):
            name = model if model in self.experts else self.aliases.get(model)
            if name is None:
                raise APIError(404, f"The model {model!r} does not exist; GET /v1/models lists the base model "
                                    "and the experts", param="model", code="model_not_found")
            expert = self.experts[name]
            pin = Decision(self.labels.get(name, name), expert, "pinned", f"pinned -> {name}")
        if adapt is not None:
            if pin is not None:
                raise APIError(400, "'adapt' chooses how to route a request to an expert; it cannot be combined "
                                    "with an expert as 'model' (use the base model id)", param="adapt")
            if adapt not in self.strategies:
                raise APIError(400, f"adapt={adapt!r} is not available on this server; use one of "
                                    f"{', '.join(self.strategies)}", param="adapt")
        return pin, adapt or self.strategy

    def submit(self, job: Job) -> None:
        """Queue a job or answer 429 (queue full) / 503 (closing) at once."""
        with self._cond:
            if self._closing or self._thread is None:
                raise APIError(503, "the server is not accepting requests", type="server_error", code="unavailable")
            if len(self._pending) >= self.queue_size:
                self.stats["rejected_queue_full"] += 1
                raise APIError(429, f"the server is busy ({self.queue_size} requests already waiting); retry shortly",
                               type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
            self._pending.append(job)
            self.stats["requests"] += 1
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client left: drop the job if it has not started; a running stream stops at its next token."""
        with self._cond:
            job.cancelled = True
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
                self.stats["dropped_before_start"] += 1

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        if self.threads:  # torch's intra-op setting is per thread: set it where the model runs
            torch.set_num_threads(self.threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.busy = True
            try:
                if batch[0].stream:
                    self._run_stream(batch[0])
                else:
                    self._run_batch(batch)
            except (APIError, T2Error) as exc:  # a request the model cannot take (a user mistake)
                for job in batch:
                    job.fail(exc)
            except Exception as exc:  # never let one request kill the worker
                log.exception("generation failed")
                self.stats["errors"] += 1
                for job in batch:
                    job.fail(exc)
            finally:
                self.busy = False

    def _next_batch(self) -> list[Job] | None:
        """The oldest job plus the waiting jobs one generate() call can serve with it."""
        with self._cond:
            first = None
            while first is None:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return None
                first = self._pending.popleft()
            if first.stream:
                return [first]
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self.batch_wait_s
            while rows < self.max_batch:
                for job in list(self._pending):
                    if job.stream or job.sampling_key != first.sampling_key or rows + job.rows > self.max_batch:
                        continue
                    self._pending.remove(job)
                    batch.append(job)
                    rows += job.rows
                left = deadline - time.monotonic()
                if rows >= self.max_batch or left <= 0 or self._closing:
                    break
                self._cond.wait(left)
            return batch

    def _render(self, messages: list[dict[str, str]]) -> str:
        from .generation import render_prompt

        try:
            return render_prompt(messages, self.tokenizer)
        except Exception as exc:  # jinja raises for roles a template does not accept
            raise APIError(400, f"the model's chat template rejected these messages: {exc}",
                           param="messages") from None

    def _prepare(self, job: Job) -> None:
        """Render and measure the prompts; settle max_new against the context (400 if it does not fit)."""
        prompts = [self._render(job.messages)] if job.messages is not None else list(job.texts or [])
        param = "messages" if job.messages is not None else "prompt"
        ctx = self.context_length
        lengths = []
        for p in prompts:
            n = len(self.tokenizer(p, add_special_tokens=False)["input_ids"])
            if n == 0:
                raise APIError(400, "the prompt is empty (no tokens); send some text", param=param)
            if n >= ctx:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens, but the prompt has "
                                    f"{n} tokens; shorten it", param=param, code="context_length_exceeded")
            if job.max_tokens is not None and n + job.max_tokens > ctx:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens; the prompt has {n} "
                                    f"tokens and max_tokens asks for {job.max_tokens} more; lower max_tokens",
                               param="max_tokens", code="context_length_exceeded")
            lengths.append(n)
        job.prompts, job.prompt_tokens = prompts, lengths
        job.max_new = job.max_tokens or max(1, min(self.max_tokens_limit, ctx - max(lengths)))

    def _route(self, strategy: str, texts: list[str]) -> list[Decision]:
        if strategy == "none" or strategy not in self._adaptive:
            return [Decision("base", None, strategy, "base weights") for _ in texts]
        routes = self._adaptive[strategy].route(texts)
        return [Decision(r.label, r.expert, strategy, r.describe(), bool(r.fallback)) for r in routes]

    def _decide(self, jobs: list[Job]) -> list[Job]:
        """Fill each job's decisions (routing per strategy in one call); returns the jobs still alive."""
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            if job.pin is not None:
                job.decisions = [job.pin] * len(job.prompts)
            else:
                groups.setdefault(job.strategy, []).append(job)
        failed: set[int] = set()
        for strategy, group in groups.items():
            texts = [t for job in group for t in job.route_texts]
            try:
                decisions = self._route(strategy, texts)
            except Exception as exc:
                if not isinstance(exc, T2Error):
                    log.exception("routing failed")
                for job in group:
                    job.fail(exc)
                    failed.add(id(job))
                continue
            i = 0
            for job in group:
                job.decisions = decisions[i:i + len(job.route_texts)]
                i += len(job.route_texts)
        return [j for j in jobs if id(j) not in failed]

    def _run_batch(self, jobs: list[Job]) -> None:
        """Prepare and route a batch of jobs, then generate (in as few calls as the context allows)."""
        live = []
        for job in jobs:
            if job.cancelled:
                continue
            try:
                self._prepare(job)
            except APIError as exc:
                job.fail(exc)
                continue
            live.append(job)
        live = self._decide(live)
        # One generate call runs every row to the batch's largest max_new: split the jobs so that
        # no row goes past the context (models with learned positions would fail, not just drift).
        groups: list[list[Job]] = []
        for job in live:
            group = groups[-1] if groups else None
            if group and max(max(j.prompt_tokens) for j in [*group, job]) + max(j.max_new for j in [*group, job]) \
                    <= self.context_length:
                group.append(job)
            else:
                groups.append([job])
        for group in groups:
            self._generate(group)

    def _generate(self, jobs: list[Job]) -> None:
        """One (mixed-expert) generate call for prepared, routed jobs; resolves each job."""
        from .generation import decode_row, generate

        prompts, experts = [], []
        for job in jobs:
            for p, d in zip(job.prompts, job.decisions, strict=True):
                prompts += [p] * job.n
                experts += [d.expert] * job.n
        first = jobs[0]
        gens = generate(self.model, self.tokenizer, prompts, max_new_tokens=max(j.max_new for j in jobs),
                        temperature=first.temperature, top_p=first.top_p,
                        batch_size=max(self.max_batch, len(prompts)), svf=self.svf,
                        experts=experts if self.svf is not None else None, seed=first.seed)
        self.stats["batches"] += 1
        self.stats["rows"] += len(prompts)
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(prompts))
        k = 0
        for job in jobs:
            per_prompt = []
            for _ in job.prompts:
                row = []
                for _ in range(job.n):
                    # this job's own max_tokens and stop strings (the batch ran to the largest max_tokens)
                    g = decode_row(gens[k].token_ids[: job.max_new], self.tokenizer, job.stop)
                    k += 1
                    row.append(Choice(g.text, g.num_tokens, "stop" if g.finished or g.stopped else "length"))
                per_prompt.append(row)
            job.resolve(JobResult(job.prompt_tokens, job.decisions, per_prompt))

    def _run_stream(self, job: Job) -> None:
        """Generate one request alone with a streamer; stops when the client leaves or a stop string appears."""
        if job.cancelled:
            return
        self.stats["streams"] += 1
        self._prepare(job)
        if not self._decide([job]):
            return
        decision = job.decisions[0]
        job.emit(("meta", decision, job.prompt_tokens[0]))
        from .generation import generate_stream, seeded

        weights = contextlib.nullcontext() if self.svf is None else self.svf.weights_for([decision.expert])
        completion = 0
        with weights, seeded(job.seed, next(self.model.parameters()).device):
            for index in range(job.n):
                if job.cancelled or self._closing:
                    break
                job.emit(("start", index))
                gen = generate_stream(self.model, self.tokenizer, job.prompts[0],
                                      lambda text, i=index: job.emit(("delta", i, text)),
                                      max_new_tokens=job.max_new, temperature=job.temperature, top_p=job.top_p,
                                      stop=job.stop, should_stop=lambda: job.cancelled or self._closing)
                completion += gen.num_tokens
                job.emit(("finish", index, "stop" if gen.finished or gen.stopped else "length"))
        if job.cancelled:
            self.stats["streams_stopped"] += 1
        job.emit(("done", job.prompt_tokens[0], completion))

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self._thread is not None and not self._closing else "stopping",
                "model": self.model_id, "experts": list(self.experts), "strategy": self.strategy,
                "strategies": list(self.strategies), "queued": self.queued, "queue_size": self.queue_size,
                "max_batch": self.max_batch, "busy": self.busy, "context_length": self.context_length,
                "max_tokens_limit": self.max_tokens_limit, "threads": self.threads or torch.get_num_threads(),
                "stats": dict(self.stats)}


# ---------------------------------------------------------------------------------------
# HTTP side
# ---------------------------------------------------------------------------------------
def _param_from_loc(loc: Sequence[Any]) -> str | None:
    """``('messages', 0, 'content', 'str')`` → ``messages[0].content`` (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in ("str", "int", "float", "bool", "list",
                                                                             "dict", "none"):
            out += ("." if out else "") + part
        else:
            break
    return out or None


def _validation_error(exc) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return APIError(400, f"We could not parse the JSON body of your request ({first['msg']}); send valid JSON",
                        code="invalid_json")
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return APIError(400, "the request body must be a JSON object", code="invalid_json")
    param = _param_from_loc(first["loc"])
    msgs = list(dict.fromkeys(e["msg"] for e in errors if _param_from_loc(e["loc"]) == param))
    where = f"{param}: " if param else ""
    return APIError(400, f"Invalid request: {where}{'; or '.join(msgs)}", param=param, code="invalid_value")


def _allowed_extra(key: str, value: Any) -> bool:
    # exact types: ``logprobs: 0`` or ``top_logprobs: 0`` is a request, not an absent field (0 == False)
    if value is None or value is False or (type(value) in (list, dict) and not value):
        return True
    if key == "response_format":
        return value == {"type": "text"}
    return (key == "best_of" and type(value) is int and value == 1) or (key == "tool_choice" and value == "none")


def _check_unsupported(req, names: Sequence[str]) -> None:
    for key, value in (req.model_extra or {}).items():
        if key in names and not _allowed_extra(key, value):
            raise APIError(400, f"{key!r} is not supported by t2 serve", param=key, code="unsupported_parameter")


def _chat_messages(req) -> tuple[list[dict[str, str]], str]:
    """Plain ``{"role", "content"}`` dicts for the chat template, and the text to route on."""
    out = []
    for i, m in enumerate(req.messages):
        if m.content is None:
            text = ""
        elif isinstance(m.content, str):
            text = m.content
        else:
            parts = []
            for j, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise APIError(400, f"only text content is supported, got a {part.type!r} part",
                                   param=f"messages[{i}].content[{j}]", code="unsupported_content")
                parts.append(part.text)
            text = "\n".join(parts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    users = [m["content"] for m in out if m["role"] == "user"]
    return out, users[-1] if users else out[-1]["content"]


def create_app(model, tokenizer, svf=None, experts: Sequence[Expert] = (), strategy: str | None = None,
               classifier: Expert | None = None, *, api_key: str | None = None, model_id: str | None = None,
               max_batch: int = 8, queue_size: int = 64, max_tokens_limit: int = 512,
               max_body_bytes: int = 1 << 20, context_length: int | None = None, batch_wait_s: float = 0.005,
               threads: int | None = None, body_timeout_s: float | None = None):
    """The FastAPI app serving ``model`` (and ``experts`` through ``svf``) with the OpenAI API.

    The engine's worker thread starts with the app (lifespan) and stops with it. ``strategy``
    defaults to ``prompt`` when there are experts, else ``none``. ``body_timeout_s`` (default: the
    ``T2_BODY_TIMEOUT_S`` environment variable, else 30) bounds the time to receive a request body
    (then 408). Raises T2Error for a bad setup.
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response, StreamingResponse
        from pydantic import ValidationError
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from starlette.requests import ClientDisconnect
    except ImportError as exc:  # pragma: no cover - an install problem
        raise T2Error(f"t2 serve needs fastapi and uvicorn ({exc}); run: pip install fastapi uvicorn") from None
    from . import serve_schema as s

    if body_timeout_s is None:
        try:
            body_timeout_s = float(os.environ.get("T2_BODY_TIMEOUT_S", BODY_TIMEOUT_S))
        except ValueError:
            raise T2Error("T2_BODY_TIMEOUT_S must be a number of seconds") from None
    if not body_timeout_s > 0:
        raise T2Error(f"body_timeout_s must be positive, got {body_timeout_s!r}")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise T2Error(f"max_body_bytes must be at least 1024, got {max_body_bytes!r}")
    engine = Engine(model, tokenizer, svf, experts, strategy, classifier, model_id=model_id, max_batch=max_batch,
                    queue_size=queue_size, max_tokens_limit=max_tokens_limit, context_length=context_length,
                    batch_wait_s=batch_wait_s, threads=threads)

    @contextlib.asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="transformer_squared", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    if api_key:
        app.add_middleware(_BearerAuth, api_key=api_key)

    class _SSE(StreamingResponse):
        """A stream that tells the engine when it ends for any reason (even before its first byte)."""

        def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_close = on_close

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.on_close()

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        msg = f"Unknown request URL: {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error_response(APIError(exc.status_code, msg, code=code))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(APIError(400, f"Invalid request: {exc.errors()[:1]}", code="invalid_value"))

    @app.exception_handler(_ClientGone)
    async def _client_gone(request: Request, exc: _ClientGone) -> Response:
        return Response(status_code=499)  # nobody is listening: no log, no traceback

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(_server_error(exc))

    async def read_body(request: Request) -> bytes:
        """The body, or 413 past max_body_bytes (the rest is read and dropped so the client sees the 413)."""
        declared = request.headers.get("content-length", "")
        too_big = declared.isdigit() and int(declared) > max_body_bytes
        chunks, size = [], 0

        async def receive_all() -> None:
            nonlocal size, too_big
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:
                    too_big = True
                if too_big:
                    chunks.clear()
                    if size > DRAIN_LIMIT:
                        break
                else:
                    chunks.append(chunk)

        try:
            await asyncio.wait_for(receive_all(), body_timeout_s)
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive within {body_timeout_s:g} s",
                           code="request_timeout") from None
        except ClientDisconnect:
            raise _ClientGone() from None
        if too_big:
            raise APIError(413, f"the request body is larger than {max_body_bytes} bytes", code="request_too_large")
        return b"".join(chunks)

    async def parse(request: Request, cls):
        body = await read_body(request)
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise _validation_error(exc) from None

    def make_job(req, *, route_texts: list[str], max_tokens: int | None, **kw: Any) -> Job:
        pin, strategy_ = engine.resolve_model(req.model, req.adapt)
        if max_tokens is not None and max_tokens > engine.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens} but this server allows at most "
                                f"{engine.max_tokens_limit}", param="max_tokens", code="max_tokens_exceeded")
        if len(route_texts) * req.n > MAX_ROWS_PER_REQUEST:
            raise APIError(400, f"at most {MAX_ROWS_PER_REQUEST} completions per request (prompts × n)", param="n")
        return Job(route_texts=route_texts, n=req.n, max_tokens=max_tokens, temperature=req.temperature,
                   top_p=req.top_p, seed=req.seed, stop=req.stop_list(), pin=pin, strategy=strategy_,
                   stream=req.stream, loop=asyncio.get_running_loop(), **kw)

    async def until_disconnect(request: Request, awaitable) -> tuple[bool, Any]:
        """Await ``awaitable`` unless the client disconnects first: (True, result) or (False, None)."""
        task = asyncio.ensure_future(awaitable)
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return True, task.result()
            return False, None
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()

    async def run_job(request: Request, job: Job) -> JobResult | None:
        job.future = job.loop.create_future()
        engine.submit(job)
        ok, result = False, None
        try:
            ok, result = await until_disconnect(request, job.future)
        finally:
            if not ok:  # the client left, or this handler was cancelled
                engine.cancel(job)
        return result

    def expert_header(decisions: Sequence[Decision]) -> dict[str, str]:
        names = list(dict.fromkeys(d.header for d in decisions))
        return {"X-T2-Expert": ",".join(names).encode("ascii", "replace").decode("ascii")}

    async def stream_job(request: Request, job: Job, model_name: str, chat: bool, include_usage: bool):
        """Wait for the first pass (so errors are plain JSON and the header is known), then stream SSE."""
        job.events = asyncio.Queue()
        engine.submit(job)
        ok, first = False, None
        try:
            ok, first = await until_disconnect(request, job.events.get())
        finally:
            if not ok:
                engine.cancel(job)
        if not ok:
            return JSONResponse({}, status_code=499)
        if first[0] == "error":
            return error_response(first[1])
        decision: Decision = first[1]
        t2 = s.T2Info(**decision.info())
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())

        def chunk(index: int | None, text: str | None = None, finish: str | None = None, role: bool = False,
                  usage: s.Usage | None = None, with_t2: bool = False) -> str:
            if chat:
                choices = [] if index is None else [s.ChatChunkChoice(
                    index=index, delta=s.Delta(role="assistant" if role else None, content=text),
                    finish_reason=finish)]
                obj = s.ChatCompletionChunk(id=rid, created=created, model=model_name, choices=choices, usage=usage,
                                            t2=t2 if with_t2 else None)
            else:
                choices = [] if index is None else [s.CompletionChoice(index=index, text=text or "",
                                                                       finish_reason=finish)]
                obj = s.CompletionResponse(id=rid, created=created, model=model_name, choices=choices, usage=usage,
                                           t2=t2 if with_t2 else None)
            data = obj.model_dump(exclude_none=True)
            if with_t2:
                data["t2"] = t2.model_dump()
            for c in data["choices"]:
                c.setdefault("finish_reason", None)
                c.setdefault("logprobs", None)
            return "data: " + _dumps(data) + "\n\n"

        async def events() -> AsyncIterator[str]:
            first_chunk = True  # the first chunk and every choice's last one carry the t2 field
            try:
                while True:
                    ev = await job.events.get()
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
                        yield "data: " + _dumps(ev[1].body()) + "\n\n"
                        break
                    elif kind == "done":
                        if include_usage:
                            yield chunk(None, usage=s.Usage(prompt_tokens=ev[1], completion_tokens=ev[2],
                                                            total_tokens=ev[1] + ev[2]))
                        break
                yield "data: [DONE]\n\n"
            finally:
                engine.cancel(job)  # no-op when finished; stops generation when the client left

        headers = {"Cache-Control": "no-cache", **expert_header([decision])}
        return _SSE(events(), media_type="text/event-stream", headers=headers, on_close=lambda: engine.cancel(job))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(engine.health())

    def model_cards() -> list[s.ModelCard]:
        cards = [s.ModelCard(id=engine.model_id, created=engine.created,
                             t2={"kind": "base", "strategy": engine.strategy, "strategies": engine.strategies,
                                 "context_length": engine.context_length})]
        for name, e in engine.experts.items():
            cards.append(s.ModelCard(id=name, created=engine.created,
                                     t2={"kind": "mixture" if e.meta.get("mixture") else "expert",
                                         "domain": engine.labels.get(name), "task": e.meta.get("task"),
                                         "base_model": e.meta.get("base_model")}))
        return cards

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse(s.ModelList(data=model_cards()).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        for card in model_cards():
            if card.id == model_id:
                return JSONResponse(card.model_dump())
        raise APIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse(request, s.ChatCompletionRequest)
        _check_unsupported(req, s.UNSUPPORTED_CHAT_FIELDS)
        messages, route_text = _chat_messages(req)
        job = make_job(req, route_texts=[route_text], max_tokens=req.max_completion_tokens or req.max_tokens,
                       messages=messages)
        model_name = req.model or engine.model_id
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return await stream_job(request, job, model_name, chat=True, include_usage=include)
        result = await run_job(request, job)
        if result is None:
            return JSONResponse({}, status_code=499)
        choices = result.choices[0]
        used = sum(c.tokens for c in choices)
        resp = s.ChatCompletionResponse(
            id="chatcmpl-" + uuid.uuid4().hex, created=int(time.time()), model=model_name,
            choices=[s.ChatChoice(index=i, message=s.AssistantMessage(content=c.text), finish_reason=c.finish_reason)
                     for i, c in enumerate(choices)],
            usage=s.Usage(prompt_tokens=result.prompt_tokens[0], completion_tokens=used,
                          total_tokens=result.prompt_tokens[0] + used),
            t2=s.T2Info(**result.decisions[0].info()))
        return JSONResponse(resp.model_dump(), headers=expert_header(result.decisions))

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, s.CompletionRequest)
        _check_unsupported(req, s.UNSUPPORTED_COMPLETION_FIELDS)
        texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not texts:
            raise APIError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
        if req.stream and len(texts) > 1:
            raise APIError(400, "streaming takes one prompt per request", param="prompt")
        job = make_job(req, route_texts=texts, max_tokens=req.max_tokens, texts=texts)
        model_name = req.model or engine.model_id
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return await stream_job(request, job, model_name, chat=False, include_usage=include)
        result = await run_job(request, job)
        if result is None:
            return JSONResponse({}, status_code=499)
        many = len(texts) > 1
        choices, used = [], 0
        for p, (row, decision) in enumerate(zip(result.choices, result.decisions, strict=True)):
            for c_i, c in enumerate(row):
                used += c.tokens
                choices.append(s.CompletionChoice(index=p * req.n + c_i, text=c.text, finish_reason=c.finish_reason,
                                                  t2=s.T2Info(**decision.info()) if many else None))
        prompt_tokens = sum(result.prompt_tokens)
        resp = s.CompletionResponse(id="cmpl-" + uuid.uuid4().hex, created=int(time.time()), model=model_name,
                                    choices=choices, usage=s.Usage(prompt_tokens=prompt_tokens, completion_tokens=used,
                                                                   total_tokens=prompt_tokens + used),
                                    t2=s.T2Info(**result.decisions[0].info()))
        data = resp.model_dump()
        if not many:
            for c in data["choices"]:
                c.pop("t2", None)
        return JSONResponse(data, headers=expert_header(result.decisions))

    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def _wait_disconnect(request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _BearerAuth:
    """ASGI middleware: every path but /health needs ``Authorization: Bearer <api key>`` (401 otherwise)."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            headers = dict(scope.get("headers") or [])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.key):
                from fastapi.responses import JSONResponse

                missing = not token.strip()
                err = APIError(401, "Missing API key: send 'Authorization: Bearer <key>'" if missing
                               else "Incorrect API key provided", code="invalid_api_key")
                await JSONResponse(err.body(), status_code=401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)

