"""`t2 serve` end to end: a real server subprocess on loopback, a real OpenAI client, raw HTTP.

One server (tiny random Llama, two tiny experts, an API key, small limits) is shared by the
module; each test talks to it over 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

KEY = "test-key"
MAX_TOKENS_LIMIT = 64
MAX_BODY = 64 * 1024
QUEUE = 16
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

# Start through cli.main exactly as `python -m transformer_squared.cli serve` does, also before
# "serve" is listed in cli.COMMAND_MODULES.
LAUNCH = (
    "import sys\nfrom transformer_squared import cli\n"
    "'serve' in cli.COMMAND_MODULES or cli.COMMAND_MODULES.append('serve')\nsys.exit(cli.main())"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCH, "serve", *args]


def _get(url: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def _post(url: str, body: bytes | dict, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=HEADERS if headers is None else headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def _start(args: list[str], log: Path, env: dict, wait_s: float = 90) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    out = open(log, "w")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(
        _serve_cmd(*args, "--port", str(port), "--no-progress", "--log-level", "warning"),
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    out.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if _get(base + "/health", timeout=2)[0] == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"server did not come up:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Files for the server: a tiny model folder and two experts (perturbed z) made on it."""
    from transformer_squared import SVFModel, load_model

    root = tmp_path_factory.mktemp("serve")
    env = dict(os.environ, T2_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "t2cache"), T2_BODY_TIMEOUT_S="2")
    os.environ.setdefault("T2_CACHE_DIR", env["T2_CACHE_DIR"])
    model = tiny_model("llama")
    model.generation_config.pad_token_id = 1
    model.generation_config.eos_token_id = 2
    model.save_pretrained(root / "tiny-llama")
    tiny_tokenizer().save_pretrained(root / "tiny-llama")
    model, tokenizer = load_model(str(root / "tiny-llama"), progress=False)
    svf = SVFModel(model, cache=False)
    gen = torch.Generator().manual_seed(0)
    for name, task in (("math-expert", "gsm8k"), ("code-expert", "mbpp")):
        svf.reset()
        with torch.no_grad():
            for p in svf.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
        svf.to_expert(name, task=task).save(root / name)
    svf.reset()
    return {"root": root, "env": env, "model": model, "tokenizer": tokenizer, "svf": svf}


@pytest.fixture(scope="module")
def server(setup):
    root = setup["root"]
    args = [
        "--model",
        str(root / "tiny-llama"),
        "--experts",
        str(root / "math-expert"),
        str(root / "code-expert"),
        "--classifier",
        str(root / "code-expert"),
        "--api-key",
        KEY,
        "--max-batch",
        "8",
        "--queue-size",
        str(QUEUE),
        "--max-tokens-limit",
        str(MAX_TOKENS_LIMIT),
        "--max-body-bytes",
        str(MAX_BODY),
        "--threads",
        "1",
    ]
    proc, base = _start(args, root / "server.log", setup["env"])
    yield base
    _stop(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _reference(setup, text: str, expert: str | None, max_tokens: int, chat: bool = True) -> str:
    """What the library itself generates (greedy) for one request, to compare with the server."""
    from transformer_squared import Expert
    from transformer_squared.generation import generate

    tok, svf = setup["tokenizer"], setup["svf"]
    prompt = (
        tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        if chat
        else text
    )
    if expert is None:
        with svf.disabled():
            return generate(setup["model"], tok, [prompt], max_new_tokens=max_tokens)[0].text
    e = Expert.load(setup["root"] / expert)
    return generate(setup["model"], tok, [prompt], max_new_tokens=max_tokens, svf=svf, experts=[e])[0].text


def _error_shape(body: str) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


# ---------------------------------------------------------------------------------------
# The OpenAI client
# ---------------------------------------------------------------------------------------
def test_models_lists_base_and_experts(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny-llama", "math-expert", "code-expert"]
    assert client.models.retrieve("code-expert").model_extra["t2"]["domain"] == "code"


def test_chat_pinned_expert_matches_the_library(client, setup):
    for name in ("math-expert", "code-expert"):
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": "w5 w6 w7"}], max_tokens=6, temperature=0
        )
        assert raw.headers["x-t2-expert"] == name
        resp = raw.parse()
        assert resp.model_extra["t2"]["expert"] == name and resp.model_extra["t2"]["strategy"] == "pinned"
        assert resp.choices[0].message.content == _reference(setup, "w5 w6 w7", name, 6)
        assert resp.usage.completion_tokens <= 6 and resp.usage.prompt_tokens == 5
    assert _reference(setup, "w5 w6 w7", "math-expert", 6) != _reference(setup, "w5 w6 w7", "code-expert", 6)
    by_domain = client.chat.completions.create(
        model="math", messages=[{"role": "user", "content": "w5"}], max_tokens=2, temperature=0
    )
    assert by_domain.model_extra["t2"]["expert"] == "math-expert"


def test_chat_strategies_prompt_classifier_and_none(client, setup):
    resp = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "w9 w10"}], max_tokens=4, temperature=0
    )
    t2 = resp.model_extra["t2"]
    assert t2["strategy"] == "prompt" and t2["route"] and t2["expert"] in (None, "math-expert", "code-expert")
    resp = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "w9 w10"}],
        max_tokens=4,
        temperature=0,
        extra_body={"adapt": "classifier"},
    )
    assert resp.model_extra["t2"]["strategy"] == "classifier"
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "w9 w10"}],
        max_tokens=4,
        temperature=0,
        extra_body={"adapt": "none"},
    )
    assert raw.headers["x-t2-expert"] == "base"
    resp = raw.parse()
    assert resp.model_extra["t2"]["expert"] is None
    assert resp.choices[0].message.content == _reference(setup, "w9 w10", None, 4)


def test_mixed_expert_requests_together_each_get_their_expert(client, setup):
    """Concurrent requests pinned to different experts (one batch may mix them) stay exact."""
    pins = ["math-expert", "code-expert", None, "math-expert", "code-expert", None]

    def ask(pin):
        kw = {"model": pin} if pin else {"model": "tiny-llama", "extra_body": {"adapt": "none"}}
        return client.chat.completions.create(
            messages=[{"role": "user", "content": "w11 w12"}], max_tokens=5, temperature=0, **kw
        )

    with ThreadPoolExecutor(len(pins)) as pool:
        answers = list(pool.map(ask, pins))
    for pin, resp in zip(pins, answers, strict=True):
        assert resp.model_extra["t2"]["expert"] == pin
        assert resp.choices[0].message.content == _reference(setup, "w11 w12", pin, 5)


def test_completions_one_and_many_prompts(client, setup):
    resp = client.completions.create(model="code-expert", prompt="w20 w21", max_tokens=4, temperature=0)
    assert resp.object == "text_completion" and resp.choices[0].text == _reference(
        setup, "w20 w21", "code-expert", 4, chat=False
    )
    resp = client.completions.create(
        model="tiny-llama", prompt=["w20", "w30 w31"], max_tokens=3, n=2, temperature=0, extra_body={"adapt": "none"}
    )
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert resp.choices[0].text == resp.choices[1].text  # greedy: n copies agree
    assert resp.choices[2].model_extra["t2"]["expert"] is None


def test_chat_streaming_matches_non_streaming(client):
    kw = dict(model="math-expert", messages=[{"role": "user", "content": "w40 w41"}], max_tokens=8, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].model_extra["t2"]["expert"] == "math-expert"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_completion_streaming_and_stop_sequence(client):
    base = client.completions.create(model="code-expert", prompt="w50", max_tokens=10, temperature=0).choices[0].text
    words = base.split()
    assert len(words) >= 3
    stop = " " + words[2]
    cut = client.completions.create(model="code-expert", prompt="w50", max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].text == base[: base.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = list(
        client.completions.create(
            model="code-expert", prompt="w50", max_tokens=10, temperature=0, stop=[stop], stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text
    assert streamed[0].model_extra["t2"]["expert"] == "code-expert"
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_sampling_with_seed_is_reproducible(client):
    kw = dict(
        model="tiny-llama", messages=[{"role": "user", "content": "w60"}], max_tokens=8, temperature=1.0, seed=123
    )
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_openai_client_sees_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "w1"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "w1"}], max_tokens=MAX_TOKENS_LIMIT + 1
        )
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# ---------------------------------------------------------------------------------------
# Raw HTTP: every mistake is a 4xx in the OpenAI error shape
# ---------------------------------------------------------------------------------------
CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny-llama", "messages": [{"role": "user", "content": "w5"}], "max_tokens": 2}


@pytest.mark.parametrize(
    "path,body,headers,status,param",
    [
        (CHAT, b"{not json", None, 400, None),
        (CHAT, b"", None, 400, None),
        (CHAT, b"[1, 2]", None, 400, None),
        (CHAT, {"messages": "hi"}, None, 400, "messages"),
        (CHAT, {**GOOD, "max_tokens": "5"}, None, 400, "max_tokens"),
        (CHAT, {**GOOD, "temperature": 5}, None, 400, "temperature"),
        (CHAT, {**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, None, 400, "messages[0].role"),
        (CHAT, {**GOOD, "messages": []}, None, 400, "messages"),
        (CHAT, {**GOOD, "stream": "yes"}, None, 400, "stream"),
        (CHAT, {**GOOD, "model": "no-such-model"}, None, 404, "model"),
        (CHAT, {**GOOD, "max_tokens": MAX_TOKENS_LIMIT + 1}, None, 400, "max_tokens"),
        (
            CHAT,
            {**GOOD, "max_tokens": 60, "messages": [{"role": "user", "content": "w5 " * 100}]},
            None,
            400,
            "max_tokens",
        ),
        (CHAT, {**GOOD, "messages": [{"role": "user", "content": "w5 " * 300}]}, None, 400, "messages"),
        (CHAT, {**GOOD, "stream": True, "messages": [{"role": "user", "content": "w5 " * 300}]}, None, 400, "messages"),
        (CHAT, {**GOOD, "adapt": "telepathy"}, None, 400, "adapt"),
        (CHAT, {**GOOD, "model": "math-expert", "adapt": "none"}, None, 400, "adapt"),
        (CHAT, {**GOOD, "tools": [{"type": "function"}]}, None, 400, "tools"),
        (
            CHAT,
            {**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            None,
            400,
            "messages[0].content[0]",
        ),
        ("/v1/completions", {"model": "tiny-llama", "prompt": 5}, None, 400, "prompt"),
        ("/v1/completions", {"model": "tiny-llama", "prompt": ""}, None, 400, "prompt"),
        (CHAT, {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, None, 400, "stop"),
        (CHAT, {**GOOD, "stop": ["x"] * 10_000}, None, 400, "stop"),
        (CHAT, {**GOOD, "logprobs": 0}, None, 400, "logprobs"),
        (CHAT, {**GOOD, "logprobs": True}, None, 400, "logprobs"),
        (CHAT, {**GOOD, "top_logprobs": 0}, None, 400, "top_logprobs"),
        ("/v1/completions", {"model": "tiny-llama", "prompt": "w5", "logprobs": 0}, None, 400, "logprobs"),
        ("/v1/completions", {"model": "tiny-llama", "prompt": "w5", "best_of": True}, None, 400, "best_of"),
        (CHAT, GOOD, {"Content-Type": "application/json"}, 401, None),
        (CHAT, GOOD, {"Authorization": "Bearer nope"}, 401, None),
        ("/v1/nothing", GOOD, None, 404, None),
    ],
)
def test_raw_http_errors(server, path, body, headers, status, param):
    code, _, text = _post(server + path, body, headers)
    assert code == status, text
    err = _error_shape(text)
    assert err["param"] == param
    if status == 401:
        assert err["code"] == "invalid_api_key"


def test_oversize_body_is_413_and_key_rules(server):
    big = json.dumps({**GOOD, "messages": [{"role": "user", "content": "w5 " * MAX_BODY}]}).encode()
    code, _, text = _post(server + CHAT, big)
    assert code == 413 and _error_shape(text)["code"] == "request_too_large"
    # also without a Content-Length (chunked upload)
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=30)
    conn.request(
        "POST",
        CHAT,
        body=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]),
        headers={**HEADERS, "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 413 and _error_shape(resp.read().decode())
    conn.close()
    assert _get(server + "/health")[0] == 200  # no key needed
    assert _get(server + "/v1/models")[0] == 401
    assert _get(server + "/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200


# ---------------------------------------------------------------------------------------
# Concurrency: disconnects, load
# ---------------------------------------------------------------------------------------
def _health(server) -> dict:
    return _get(server + "/health")[2]


def test_client_disconnect_stops_stream_and_drops_queued(server):
    before = _health(server)["stats"]
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=30)
    # greedy: a sampled EOS in the first few tokens would end the stream before the disconnect is seen
    conn.request(
        "POST",
        CHAT,
        body=json.dumps(
            {
                **GOOD,
                "max_tokens": MAX_TOKENS_LIMIT,
                "stream": True,
                "temperature": 0,
                "messages": [{"role": "user", "content": "w5"}],
            }
        ),
        headers=HEADERS,
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    # a burst of requests whose clients leave at once: those still queued are dropped
    socks = []
    for _ in range(12):
        s = socket.create_connection(server.removeprefix("http://").split(":"), timeout=10)
        body = json.dumps({**GOOD, "max_tokens": MAX_TOKENS_LIMIT, "temperature": 0}).encode()
        s.sendall(
            b"POST "
            + CHAT.encode()
            + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        socks.append(s)
    time.sleep(0.05)
    for s in socks:
        s.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        h = _health(server)
        if h["queued"] == 0 and not h["busy"] and h["stats"]["streams_stopped"] > before["streams_stopped"]:
            break
        time.sleep(0.2)
    stats = h["stats"]
    assert stats["streams_stopped"] > before["streams_stopped"]
    assert stats["dropped_before_start"] + stats["batches"] - before["batches"] >= 1
    assert _post(server + CHAT, GOOD)[0] == 200


def test_load_200_concurrent_mixed_requests(server):
    """200 requests at once, good and bad: every one answered with the right status; server alive."""
    kinds = []
    for i in range(200):
        kinds.append(
            ["chat", "pinned", "completion", "bad_json", "unknown_model", "too_many_tokens", "stream", "adapt_none"][
                i % 8
            ]
        )

    def one(kind: str) -> tuple[str, int, float]:
        body: bytes | dict
        if kind == "chat":
            body = {**GOOD, "max_tokens": 4, "temperature": 0}
        elif kind == "pinned":
            body = {**GOOD, "model": "code-expert", "max_tokens": 4}
        elif kind == "adapt_none":
            body = {**GOOD, "adapt": "none", "max_tokens": 4, "temperature": 0.8}
        elif kind == "completion":
            body = {"model": "math-expert", "prompt": "w7 w8", "max_tokens": 4}
        elif kind == "bad_json":
            body = b'{"messages": ['
        elif kind == "unknown_model":
            body = {**GOOD, "model": "gpt-9"}
        elif kind == "too_many_tokens":
            body = {**GOOD, "max_tokens": 10_000}
        else:
            body = {**GOOD, "max_tokens": 4, "stream": True}
        path = "/v1/completions" if kind == "completion" else CHAT
        t = time.perf_counter()
        code, headers, text = _post(server + path, body, timeout=60)
        if code == 429:
            assert headers.get("retry-after") or headers.get("Retry-After")
        if code == 200 and kind == "stream":
            assert text.rstrip().endswith("data: [DONE]")
        elif code == 200:
            assert headers.get("x-t2-expert") or headers.get("X-T2-Expert")
        else:
            _error_shape(text)
        return kind, code, time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, kinds))
    elapsed = time.perf_counter() - t0
    expected_bad = {"bad_json": 400, "unknown_model": 404, "too_many_tokens": 400}
    for kind, code, _ in results:
        if kind in expected_bad:
            assert code == expected_bad[kind], (kind, code)
        else:
            assert code in (200, 429), (kind, code)
    ok = sum(code == 200 for _, code, _ in results)
    counts = {c: sum(code == c for _, code, _ in results) for c in (200, 400, 404, 429)}
    assert ok >= QUEUE // 2 and elapsed < 60, counts
    h = _health(server)
    assert h["status"] == "ok" and h["stats"]["errors"] == 0 and h["stats"]["max_batch_rows"] > 1, (counts, h)
    print(counts, h["stats"], f"{elapsed:.2f}s")
    assert _post(server + CHAT, GOOD)[0] == 200


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------
def test_cli_rejects_bad_setup_in_one_line(setup, tmp_path):
    root = setup["root"]
    proc = subprocess.run(
        _serve_cmd("--model", str(root / "tiny-llama"), "--experts", str(tmp_path / "missing")),
        capture_output=True,
        text=True,
        timeout=60,
        env=setup["env"],
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("t2 serve: error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            _serve_cmd("--model", str(root / "tiny-llama"), "--port", str(port)),
            capture_output=True,
            text=True,
            timeout=60,
            env=setup["env"],
        )
    assert proc.returncode == 2 and "another --port" in proc.stderr


def test_create_app_in_process_rejects_bad_setup(setup):
    from transformer_squared import Expert, T2Error
    from transformer_squared.serve import create_app

    math = Expert.load(setup["root"] / "math-expert")
    with pytest.raises(T2Error, match="classifier"):
        create_app(setup["model"], setup["tokenizer"], setup["svf"], [math], strategy="classifier")
    with pytest.raises(T2Error, match="unknown adaptation strategy"):
        create_app(setup["model"], setup["tokenizer"], setup["svf"], [math], strategy="fewshot")
    with pytest.raises(T2Error, match="share the id"):
        create_app(setup["model"], setup["tokenizer"], setup["svf"], [math, math])
    app = create_app(setup["model"], setup["tokenizer"], setup["svf"], [math])
    assert app.state.engine.strategy == "prompt" and app.state.engine.strategies == ["none", "prompt"]


def test_batches_split_so_every_row_fits_the_context(setup):
    """A long prompt and a long max_tokens from two requests must not share one generate call."""
    from transformer_squared.serve import Engine, Job

    engine = Engine(setup["model"], setup["tokenizer"], setup["svf"], context_length=128, max_tokens_limit=64)
    calls = []
    engine._generate = lambda jobs: calls.append([j.prompt_tokens[0] for j in jobs])

    def job(words: int, max_tokens: int) -> Job:
        return Job(
            route_texts=["x"],
            n=1,
            max_tokens=max_tokens,
            temperature=0.0,
            top_p=1.0,
            seed=None,
            stop=[],
            pin=None,
            strategy="none",
            texts=["w5 " * words],
        )

    engine._run_batch([job(100, 20), job(3, 64), job(3, 10)])
    assert calls == [[100], [3, 3]]


@pytest.mark.slow
def test_default_model_serves_a_chat(tmp_path_factory):
    env = dict(os.environ, T2_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "t2cache"), T2_BODY_TIMEOUT_S="2")
    # the first start in a session converts the bundled GGUF and takes the SVD (minutes on 2 busy cores)
    proc, base = _start(
        ["--model", "default", "--max-tokens-limit", "32", "--threads", "1"],
        tmp_path_factory.mktemp("slow") / "log",
        env,
        wait_s=300,
    )
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        resp = client.chat.completions.create(
            model="default", max_tokens=12, temperature=0, messages=[{"role": "user", "content": "What is 2+2?"}]
        )
        assert resp.choices[0].message.content.strip() and resp.model_extra["t2"]["expert"] is None
    finally:
        _stop(proc)


# ---------------------------------------------------------------------------------------
# Issue 14: no request can produce a 500
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1e-45, 1e-300, 5e-324, 1e-6])
@pytest.mark.parametrize("stream", [False, True])
def test_tiny_temperatures_decode_greedily(server, temperature, stream):
    body = {**GOOD, "max_tokens": 4, "temperature": temperature, "stream": stream}
    code, _, text = _post(server + CHAT, body)
    assert code == 200, text
    assert "error" not in text
    greedy = _post(server + CHAT, {**body, "temperature": 0})[2]
    if not stream:
        assert json.loads(text)["choices"][0]["message"] == json.loads(greedy)["choices"][0]["message"]


def test_body_read_timeout_is_408_and_disconnects_are_quiet(server, setup):
    import socket

    host, port = server.removeprefix("http://").split(":")
    body = json.dumps(GOOD).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # sends half the body, then waits
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        start = time.monotonic()
        reply = sock.recv(4096).decode(errors="replace")
        assert reply.startswith("HTTP/1.1 408"), reply
        assert time.monotonic() - start < 10
    log = setup["root"] / "server.log"
    before = log.read_text(errors="replace").count("Traceback")
    for _ in range(3):  # hang up mid-body
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
    time.sleep(0.5)
    assert _get(server + "/health")[0] == 200
    assert log.read_text(errors="replace").count("Traceback") == before
