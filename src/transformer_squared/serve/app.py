"""``create_app``: the FastAPI app around one :class:`~.engine.Engine`.

The app's lifespan starts the engine's worker and stops it; an optional API key guards every
path but ``/health``; the body size and time limits are checked here and kept in ``app.state``
for the handlers (:mod:`.routes`), which find the engine there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import T2Error
from ..experts import Expert
from .engine import Engine
from .errors import APIError, install_handlers

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from ..svf import SVFModel

BODY_TIMEOUT_S = 30.0  # default seconds to receive a whole request body before answering 408


def create_app(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    svf: SVFModel | None = None,
    experts: Sequence[Expert] = (),
    strategy: str | None = None,
    classifier: Expert | None = None,
    *,
    router: Any = None,
    api_key: str | None = None,
    model_id: str | None = None,
    max_batch: int = 8,
    queue_size: int = 64,
    max_tokens_limit: int = 512,
    max_body_bytes: int = 1 << 20,
    context_length: int | None = None,
    batch_wait_s: float = 0.005,
    threads: int | None = None,
    body_timeout_s: float | None = None,
):
    """The FastAPI app serving ``model`` (and ``experts`` through ``svf``) with the OpenAI API.

    The engine's worker thread starts with the app (lifespan) and stops with it. ``strategy``
    defaults to ``prompt`` when there are experts, else ``none``. ``body_timeout_s`` (default: the
    ``T2_BODY_TIMEOUT_S`` environment variable, else 30) bounds the time to receive a request body
    (then 408). Raises T2Error for a bad setup.
    """
    try:
        from fastapi import FastAPI

        from .routes import router as api_routes
    except ImportError as exc:  # pragma: no cover - an install problem
        raise T2Error(f"t2 serve needs fastapi and uvicorn ({exc}); run: pip install fastapi uvicorn") from None
    body_timeout_s = _body_timeout(body_timeout_s)
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise T2Error(f"max_body_bytes must be at least 1024, got {max_body_bytes!r}")
    engine = Engine(
        model,
        tokenizer,
        svf,
        experts,
        strategy,
        classifier,
        router=router,
        model_id=model_id,
        max_batch=max_batch,
        queue_size=queue_size,
        max_tokens_limit=max_tokens_limit,
        context_length=context_length,
        batch_wait_s=batch_wait_s,
        threads=threads,
    )
    app = FastAPI(title="transformer_squared", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.max_body_bytes = max_body_bytes
    app.state.body_timeout_s = body_timeout_s
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    install_handlers(app)
    app.include_router(api_routes)
    return app


def _body_timeout(value: float | None) -> float:
    if value is None:
        try:
            value = float(os.environ.get("T2_BODY_TIMEOUT_S", BODY_TIMEOUT_S))
        except ValueError:
            raise T2Error("T2_BODY_TIMEOUT_S must be a number of seconds") from None
    if not value > 0:
        raise T2Error(f"body_timeout_s must be positive, got {value!r}")
    return value


@contextlib.asynccontextmanager
async def _lifespan(app) -> AsyncIterator[None]:
    engine: Engine = app.state.engine
    engine.start()
    try:
        yield
    finally:
        await asyncio.to_thread(engine.close)


class BearerAuth:
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
                err = APIError(
                    401,
                    "Missing API key: send 'Authorization: Bearer <key>'" if missing else "Incorrect API key provided",
                    code="invalid_api_key",
                )
                await JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
