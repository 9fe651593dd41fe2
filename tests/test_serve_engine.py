"""The serving engine driven directly: no HTTP client, no FastAPI app (the engine needs neither)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from transformer_squared import SVFModel
from transformer_squared.generation import generate, render_prompt
from transformer_squared.serve import APIError, Engine, Job, JobResult


@pytest.fixture(scope="module")
def parts():
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 1
    model.generation_config.eos_token_id = 2
    tok = tiny_tokenizer()
    svf = SVFModel(model, cache=False)
    g = torch.Generator().manual_seed(0)
    experts = []
    for name, task in (("math-expert", "gsm8k"), ("code-expert", "mbpp")):
        svf.reset()
        with torch.no_grad():
            for p in svf.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
        experts.append(svf.to_expert(name, task=task))
    svf.reset()
    return model, tok, svf, experts


def _job(
    loop,
    text: str,
    pin=None,
    *,
    chat: bool = True,
    max_tokens: int = 5,
    stream: bool = False,
    n: int = 1,
    stop: list[str] | None = None,
    strategy: str = "none",
) -> Job:
    job = Job(
        route_texts=[text],
        n=n,
        max_tokens=max_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        stop=stop or [],
        pin=pin,
        strategy=strategy,
        stream=stream,
        messages=[{"role": "user", "content": text}] if chat else None,
        texts=None if chat else [text],
        loop=loop,
    )
    if stream:
        job.events = asyncio.Queue()
    else:
        job.future = loop.create_future()
    return job


def _reference(parts, text: str, expert, max_tokens: int) -> str:
    model, tok, svf, _ = parts
    prompt = render_prompt([{"role": "user", "content": text}], tok)
    return generate(model, tok, [prompt], max_new_tokens=max_tokens, svf=svf, experts=[expert])[0].text


def test_engine_batches_pinned_and_routed_jobs_like_the_library(parts):
    model, tok, svf, experts = parts
    engine = Engine(model, tok, svf, experts, max_batch=8, batch_wait_s=0.05)

    async def main() -> list[JobResult]:
        loop = asyncio.get_running_loop()
        jobs = []
        for model_id in ("math-expert", "code-expert", None):
            pin, strategy = engine.resolve_model(model_id, "none" if model_id is None else None)
            jobs.append(_job(loop, "w5 w6 w7", pin, strategy=strategy))
        for job in jobs:
            engine.submit(job)
        return await asyncio.gather(*(j.future for j in jobs))

    engine.start()
    try:
        results = asyncio.run(main())
    finally:
        engine.close()
    assert [r.decisions[0].header for r in results] == ["math-expert", "code-expert", "base"]
    for result, expert in zip(results, [*experts, None], strict=True):
        choice = result.choices[0][0]
        assert choice.text == _reference(parts, "w5 w6 w7", expert, 5)
        assert choice.finish_reason in ("stop", "length") and 1 <= choice.tokens <= 5
    assert engine.stats["requests"] == 3 and engine.stats["max_batch_rows"] == 3  # one mixed batch
    assert svf.active is None and engine.health()["status"] == "stopping"


def test_engine_streams_events_and_stops_at_a_stop_string(parts):
    model, tok, svf, experts = parts
    engine = Engine(model, tok, svf, experts)
    pin, _ = engine.resolve_model("code-expert", None)
    full = _reference(parts, "w9 w10", experts[1], 10)
    stop = " " + full.split()[2]

    async def main() -> list[tuple]:
        job = _job(asyncio.get_running_loop(), "w9 w10", pin, max_tokens=10, stream=True, stop=[stop])
        engine.submit(job)
        events = []
        while not events or events[-1][0] not in ("done", "error"):
            events.append(await asyncio.wait_for(job.events.get(), 60))
        return events

    engine.start()
    try:
        events = asyncio.run(main())
    finally:
        engine.close()
    kinds = [e[0] for e in events]
    assert kinds[:2] == ["meta", "start"] and kinds[-2:] == ["finish", "done"]
    assert events[0][1].header == "code-expert"
    assert "".join(e[2] for e in events if e[0] == "delta") == full[: full.find(stop)]
    assert events[-2] == ("finish", 0, "stop")
    assert svf.active is None


def test_engine_answers_errors_and_a_full_queue_without_a_server(parts):
    model, tok, svf, experts = parts
    engine = Engine(model, tok, svf, experts, queue_size=1, context_length=16)

    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(APIError) as closed:
            engine.submit(_job(loop, "w5"))  # not started: 503
        assert closed.value.status == 503
        with pytest.raises(APIError, match="does not exist") as unknown:
            engine.resolve_model("nope", None)
        assert unknown.value.status == 404
        engine.start()
        too_long = _job(loop, "w5 " * 20, chat=False)
        engine.submit(too_long)
        with pytest.raises(APIError, match="maximum context length") as err:
            await asyncio.wait_for(too_long.future, 60)
        assert err.value.status == 400 and err.value.param == "prompt"
        with engine._cond:  # the worker cannot take a job meanwhile (a re-entrant lock)
            engine.submit(_job(loop, "w5"))
            with pytest.raises(APIError) as full:
                engine.submit(_job(loop, "w6"))
        assert full.value.status == 429 and full.value.headers == {"Retry-After": "1"}

    try:
        asyncio.run(main())
    finally:
        engine.close()
    assert engine.stats["rejected_queue_full"] == 1


def test_engine_routes_with_the_probe(parts):
    from transformer_squared.probe import train_probe_router

    model, tok, svf, experts = parts
    pairs = [(f"w{5 + i} w{6 + i}", "math" if i % 2 else "code") for i in range(10)]
    router, _ = train_probe_router(model, tok, pairs, pairs, layers=(1,), max_tokens=8, progress=False)
    engine = Engine(model, tok, svf, experts, strategy="probe", router=router)
    assert engine.strategies == ["none", "prompt", "probe"]
    routed = engine._adaptive["probe"].route(["w5 w6", "w6 w7"])
    assert [r.label for r in routed] == router.predict(model, tok, ["w5 w6", "w6 w7"])
    with pytest.raises(Exception, match="router"):
        Engine(model, tok, svf, experts, strategy="probe")
