"""An OpenAI-compatible HTTP server that picks an expert for every request (``t2 serve``).

Shape: FastAPI handlers (:mod:`.routes`) validate a request (:mod:`.protocol`), turn it into a
:class:`~.jobs.Job` and hand it to the :class:`~.engine.Engine`, whose one worker thread owns the
model. The worker takes the waiting jobs together (up to ``max_batch`` rows), routes the ones the
server's strategy decides (the first pass, :class:`~transformer_squared.adapt.AdaptiveModel`), and
answers them in one mixed-expert batch (``generate(..., svf=svf, experts=[...])``); results go
back to the event loop through asyncio futures. The queue is bounded: when it is full the server
answers 429 at once. Every error is answered in OpenAI's shape (:mod:`.errors`).

Streaming requests are generated alone, token by token (:mod:`.streaming`: the library's
``generate_stream`` on the worker thread feeding an asyncio queue), so that the stream can stop
as soon as the client leaves.

Build the app with :func:`create_app` (:mod:`.app`; in-process tests, custom launchers); the CLI
loads the model and experts and runs it under uvicorn. The engine needs neither FastAPI nor
pydantic: it can be driven directly (``Engine.start``, ``submit``, ``close``).
"""

from .app import BODY_TIMEOUT_S, create_app
from .engine import SERVE_STRATEGIES, Engine
from .errors import APIError
from .jobs import Choice, Decision, Job, JobResult

__all__ = [
    "BODY_TIMEOUT_S",
    "SERVE_STRATEGIES",
    "APIError",
    "Choice",
    "Decision",
    "Engine",
    "Job",
    "JobResult",
    "create_app",
]
