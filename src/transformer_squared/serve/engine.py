"""The engine: one worker thread owns the model, batches the waiting jobs, routes them, generates.

It knows nothing of HTTP: :meth:`Engine.submit` takes a :class:`~.jobs.Job` (from any asyncio
event loop) and the worker answers it through the job's future or event queue. The queue is
bounded: :meth:`Engine.submit` raises a 429 :class:`~.errors.APIError` when it is full.

The worker takes the oldest job plus the waiting ones one ``generate`` call can serve (same
sampling options, up to ``max_batch`` rows), routes the unpinned ones (one first pass per
strategy, :class:`~transformer_squared.adapt.AdaptiveModel`), and answers them in one mixed-expert
batch. A streaming job runs alone (:func:`~.streaming.generate_events`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import T2Error
from ..experts import Expert
from ..generation import decode_row, generate, render_prompt
from ..models import model_name
from .errors import APIError
from .jobs import Choice, Decision, Job, JobResult
from .streaming import generate_events

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from ..svf import SVFModel

log = logging.getLogger("transformer_squared.serve")

# Strategies a request (or the server) may use; "oracle" and "fewshot" need more than a request.
SERVE_STRATEGIES = ("prompt", "classifier", "probe", "none")


def _base_model_id(model: nn.Module) -> str:
    name = str(model_name(model, "model"))
    path = Path(name)
    return path.name if (name.startswith(("/", ".", "~")) or path.exists()) and path.name else name


def _context_length(model: nn.Module) -> int:
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

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        svf: SVFModel | None = None,
        experts: Sequence[Expert] = (),
        strategy: str | None = None,
        classifier: Expert | None = None,
        *,
        router: Any = None,
        model_id: str | None = None,
        max_batch: int = 8,
        queue_size: int = 64,
        max_tokens_limit: int = 512,
        context_length: int | None = None,
        batch_wait_s: float = 0.005,
        threads: int | None = None,
    ) -> None:
        for name, value in (
            ("max_batch", max_batch),
            ("queue_size", queue_size),
            ("max_tokens_limit", max_tokens_limit),
            ("threads", threads or 1),
        ):
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
        self.router = router  # a ProbeRouter (--adapt probe)
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
            assert svf is not None  # experts without the SVFModel were refused above
            e.check_compatible(svf, strict=True)
            self.experts[e.name] = e
        self._adaptive: dict[str, Any] = {}
        self.labels: dict[str, str] = {}  # expert name -> domain label
        self._build_strategies(experts)
        if self.strategy not in self.strategies:
            raise T2Error(
                f"strategy {self.strategy!r} is not available: "
                + (
                    "it needs --experts"
                    if self.strategy == "prompt"
                    else "it needs --experts and the early-layer router (--router DIR)"
                    if self.strategy == "probe"
                    else "it needs --experts and the classification expert (--classifier DIR)"
                )
            )
        self.aliases = {
            label: name for name, label in self.labels.items() if label not in self.experts and label != self.model_id
        }
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.busy = False
        self.stats = {
            "requests": 0,
            "rows": 0,
            "batches": 0,
            "max_batch_rows": 0,
            "streams": 0,
            "rejected_queue_full": 0,
            "dropped_before_start": 0,
            "streams_stopped": 0,
            "errors": 0,
        }

    def _build_strategies(self, experts: list[Expert]) -> None:
        """One AdaptiveModel per strategy this server offers (adapt.py is imported lazily)."""
        self.strategies = ["none"]
        if not experts and self.classifier is None:
            return
        try:
            from ..adapt import AdaptiveModel, expert_domain
        except ImportError as exc:  # pragma: no cover - while adapt.py is being written
            if experts:
                log.warning("adaptive routing unavailable (%s); experts can only be pinned", exc)
            self.labels = {e.name: e.name for e in experts}
            return
        self.labels = {e.name: expert_domain(e) for e in experts}
        if not experts:
            return
        svf = self.svf
        assert svf is not None  # __init__ refuses experts without the SVFModel
        self._adaptive["prompt"] = AdaptiveModel(svf, self.tokenizer, experts, strategy="prompt")
        self.strategies.append("prompt")
        if self.classifier is not None:
            self._adaptive["classifier"] = AdaptiveModel(
                svf, self.tokenizer, experts, strategy="classifier", classifier=self.classifier
            )
            self.strategies.append("classifier")
        if self.router is not None:
            self._adaptive["probe"] = AdaptiveModel(svf, self.tokenizer, experts, strategy="probe", router=self.router)
            self.strategies.append("probe")

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
                raise APIError(
                    404,
                    f"The model {model!r} does not exist; GET /v1/models lists the base model and the experts",
                    param="model",
                    code="model_not_found",
                )
            expert = self.experts[name]
            pin = Decision(self.labels.get(name, name), expert, "pinned", f"pinned -> {name}")
        if adapt is not None:
            if pin is not None:
                raise APIError(
                    400,
                    "'adapt' chooses how to route a request to an expert; it cannot be combined "
                    "with an expert as 'model' (use the base model id)",
                    param="adapt",
                )
            if adapt not in self.strategies:
                raise APIError(
                    400,
                    f"adapt={adapt!r} is not available on this server; use one of {', '.join(self.strategies)}",
                    param="adapt",
                )
        return pin, adapt or self.strategy

    def submit(self, job: Job) -> None:
        """Queue a job or answer 429 (queue full) / 503 (closing) at once."""
        with self._cond:
            if self._closing or self._thread is None:
                raise APIError(503, "the server is not accepting requests", type="server_error", code="unavailable")
            if len(self._pending) >= self.queue_size:
                self.stats["rejected_queue_full"] += 1
                raise APIError(
                    429,
                    f"the server is busy ({self.queue_size} requests already waiting); retry shortly",
                    type="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                )
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
        try:
            return render_prompt(messages, self.tokenizer)
        except Exception as exc:  # jinja raises for roles a template does not accept
            raise APIError(400, f"the model's chat template rejected these messages: {exc}", param="messages") from None

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
                raise APIError(
                    400,
                    f"This model's maximum context length is {ctx} tokens, but the prompt has {n} tokens; shorten it",
                    param=param,
                    code="context_length_exceeded",
                )
            if job.max_tokens is not None and n + job.max_tokens > ctx:
                raise APIError(
                    400,
                    f"This model's maximum context length is {ctx} tokens; the prompt has {n} "
                    f"tokens and max_tokens asks for {job.max_tokens} more; lower max_tokens",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
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
                job.decisions = decisions[i : i + len(job.route_texts)]
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
            if (
                group
                and max(max(j.prompt_tokens) for j in [*group, job]) + max(j.max_new for j in [*group, job])
                <= self.context_length
            ):
                group.append(job)
            else:
                groups.append([job])
        for group in groups:
            self._generate(group)

    def _generate(self, jobs: list[Job]) -> None:
        """One (mixed-expert) generate call for prepared, routed jobs; resolves each job."""
        prompts, experts = [], []
        for job in jobs:
            for p, d in zip(job.prompts, job.decisions, strict=True):
                prompts += [p] * job.n
                experts += [d.expert] * job.n
        first = jobs[0]
        gens = generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=max(j.max_new for j in jobs),
            temperature=first.temperature,
            top_p=first.top_p,
            batch_size=max(self.max_batch, len(prompts)),
            svf=self.svf,
            experts=experts if self.svf is not None else None,
            seed=first.seed,
        )
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
        """Generate one request alone, streaming its text; stops when the client leaves or a stop string appears."""
        if job.cancelled:
            return
        self.stats["streams"] += 1
        self._prepare(job)
        if not self._decide([job]):
            return
        generate_events(self.model, self.tokenizer, self.svf, job, closing=lambda: self._closing)
        if job.cancelled:
            self.stats["streams_stopped"] += 1

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._thread is not None and not self._closing else "stopping",
            "model": self.model_id,
            "experts": list(self.experts),
            "strategy": self.strategy,
            "strategies": list(self.strategies),
            "queued": self.queued,
            "queue_size": self.queue_size,
            "max_batch": self.max_batch,
            "busy": self.busy,
            "context_length": self.context_length,
            "max_tokens_limit": self.max_tokens_limit,
            "threads": self.threads or torch.get_num_threads(),
            "stats": dict(self.stats),
        }
