"""The HTTP endpoints: module-level handlers that find the engine in ``request.app.state``.

Each handler reads and validates the body (size and time limits from ``app.state``), turns the
request into a :class:`~.jobs.Job`, hands it to the engine and waits for the result unless the
client leaves first (the job is then dropped, or its stream stopped).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (``request: Request``) when the routes are declared.
import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from . import protocol as s
from .engine import Engine
from .errors import APIError, ClientGone, error_response, validation_error
from .jobs import Decision, Job, JobResult
from .streaming import sse_response

MAX_ROWS_PER_REQUEST = 32  # prompts × n of one request
DRAIN_LIMIT = 64 << 20  # an oversize body is read and dropped up to this size, so the 413 arrives

router = APIRouter()


def _engine(request: Request) -> Engine:
    return request.app.state.engine


# ---------------------------------------------------------------------------------------
# Reading requests, waiting for answers
# ---------------------------------------------------------------------------------------
async def read_body(request: Request) -> bytes:
    """The body, or 413 past max_body_bytes (the rest is read and dropped so the client sees the 413)."""
    max_body_bytes, body_timeout_s = request.app.state.max_body_bytes, request.app.state.body_timeout_s
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > max_body_bytes
    chunks: list[bytes] = []
    size = 0

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
        raise APIError(
            408, f"the request body did not arrive within {body_timeout_s:g} s", code="request_timeout"
        ) from None
    except ClientDisconnect:
        raise ClientGone() from None
    if too_big:
        raise APIError(413, f"the request body is larger than {max_body_bytes} bytes", code="request_too_large")
    return b"".join(chunks)


async def parse(request: Request, cls):
    """The body validated as the pydantic model ``cls`` (400 naming the first bad field)."""
    body = await read_body(request)
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def make_job(engine: Engine, req, *, route_texts: list[str], max_tokens: int | None, **kw: Any) -> Job:
    """The job for a validated request (400/404 for a model, strategy or size this server cannot serve)."""
    pin, strategy_ = engine.resolve_model(req.model, req.adapt)
    if max_tokens is not None and max_tokens > engine.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {max_tokens} but this server allows at most {engine.max_tokens_limit}",
            param="max_tokens",
            code="max_tokens_exceeded",
        )
    if len(route_texts) * req.n > MAX_ROWS_PER_REQUEST:
        raise APIError(400, f"at most {MAX_ROWS_PER_REQUEST} completions per request (prompts × n)", param="n")
    return Job(
        route_texts=route_texts,
        n=req.n,
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=req.stop_list(),
        pin=pin,
        strategy=strategy_,
        stream=req.stream,
        loop=asyncio.get_running_loop(),
        **kw,
    )


async def _wait_disconnect(request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


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
    """Queue ``job`` and wait for its result (None: the client left first, the job was dropped)."""
    engine = _engine(request)
    assert job.loop is not None  # make_job gives every job the request's event loop
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
    """``X-T2-Expert``: the experts that answered (``base`` for the base weights), in order."""
    names = list(dict.fromkeys(d.header for d in decisions))
    return {"X-T2-Expert": ",".join(names).encode("ascii", "replace").decode("ascii")}


async def stream_job(request: Request, job: Job, model_name: str, chat: bool, include_usage: bool):
    """Wait for the first pass (so errors are plain JSON and the header is known), then stream SSE."""
    engine = _engine(request)
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
    return sse_response(engine, job, decision, model_name, chat, include_usage, expert_header([decision]))


def model_cards(engine: Engine) -> list[s.ModelCard]:
    cards = [
        s.ModelCard(
            id=engine.model_id,
            created=engine.created,
            t2={
                "kind": "base",
                "strategy": engine.strategy,
                "strategies": engine.strategies,
                "context_length": engine.context_length,
            },
        )
    ]
    for name, e in engine.experts.items():
        cards.append(
            s.ModelCard(
                id=name,
                created=engine.created,
                t2={
                    "kind": "mixture" if e.meta.get("mixture") else "expert",
                    "domain": engine.labels.get(name),
                    "task": e.meta.get("task"),
                    "base_model": e.meta.get("base_model"),
                },
            )
        )
    return cards


# ---------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------
@router.get("/health")
async def health(request: Request) -> JSONResponse:
    return JSONResponse(_engine(request).health())


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse(s.ModelList(data=model_cards(_engine(request))).model_dump())


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> JSONResponse:
    for card in model_cards(_engine(request)):
        if card.id == model_id:
            return JSONResponse(card.model_dump())
    raise APIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    req = await parse(request, s.ChatCompletionRequest)
    s.check_unsupported(req, s.UNSUPPORTED_CHAT_FIELDS)
    messages, route_text = s.chat_messages(req)
    engine = _engine(request)
    job = make_job(
        engine, req, route_texts=[route_text], max_tokens=req.max_completion_tokens or req.max_tokens, messages=messages
    )
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
        id="chatcmpl-" + uuid.uuid4().hex,
        created=int(time.time()),
        model=model_name,
        choices=[
            s.ChatChoice(index=i, message=s.AssistantMessage(content=c.text), finish_reason=c.finish_reason)
            for i, c in enumerate(choices)
        ],
        usage=s.Usage(
            prompt_tokens=result.prompt_tokens[0], completion_tokens=used, total_tokens=result.prompt_tokens[0] + used
        ),
        t2=s.T2Info(**result.decisions[0].info()),
    )
    return JSONResponse(resp.model_dump(), headers=expert_header(result.decisions))


@router.post("/v1/completions")
async def completions(request: Request):
    req = await parse(request, s.CompletionRequest)
    s.check_unsupported(req, s.UNSUPPORTED_COMPLETION_FIELDS)
    texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not texts:
        raise APIError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
    if req.stream and len(texts) > 1:
        raise APIError(400, "streaming takes one prompt per request", param="prompt")
    engine = _engine(request)
    job = make_job(engine, req, route_texts=texts, max_tokens=req.max_tokens, texts=texts)
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
            choices.append(
                s.CompletionChoice(
                    index=p * req.n + c_i,
                    text=c.text,
                    finish_reason=c.finish_reason,
                    t2=s.T2Info(**decision.info()) if many else None,
                )
            )
    prompt_tokens = sum(result.prompt_tokens)
    resp = s.CompletionResponse(
        id="cmpl-" + uuid.uuid4().hex,
        created=int(time.time()),
        model=model_name,
        choices=choices,
        usage=s.Usage(prompt_tokens=prompt_tokens, completion_tokens=used, total_tokens=prompt_tokens + used),
        t2=s.T2Info(**result.decisions[0].info()),
    )
    data = resp.model_dump()
    if not many:
        for c in data["choices"]:
            c.pop("t2", None)
    return JSONResponse(data, headers=expert_header(result.decisions))
