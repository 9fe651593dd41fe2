"""``t2 serve``: load a model and experts, then run the OpenAI-compatible server (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..errors import T2Error
from .common import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server that picks an expert per request",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models and /health. Requests arriving "
        "together are answered in one mixed-expert batch; a request may pin an expert with "
        '"model": "<expert name>" or choose the strategy with "adapt". See docs/serve.md.',
    )
    add_model_args(p)
    g = p.add_argument_group("experts and adaptation")
    g.add_argument(
        "--experts",
        nargs="+",
        default=[],
        metavar="DIR",
        help="expert folders (or folders holding expert folders); each becomes a model id",
    )
    g.add_argument(
        "--adapt",
        choices=["prompt", "classifier", "probe", "none"],
        default=None,
        help="how the server routes requests that do not pin an expert (default: prompt with experts, none without)",
    )
    g.add_argument(
        "--classifier", metavar="DIR", default=None, help="the classification expert (for --adapt classifier)"
    )
    g.add_argument("--router", metavar="DIR", default=None, help="the early-layer probe router (for --adapt probe)")
    h = p.add_argument_group("server")
    h.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    h.add_argument("--port", type=int, default=8000)
    h.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: $T2_API_KEY)",
    )
    h.add_argument("--max-batch", type=int, default=8, help="most completions generated together (default 8)")
    h.add_argument(
        "--queue-size",
        type=int,
        default=64,
        help="most requests waiting; beyond it the server answers 429 at once (default 64)",
    )
    h.add_argument(
        "--max-tokens-limit",
        type=int,
        default=512,
        help="ceiling on max_tokens, also the default for chat requests (default 512)",
    )
    h.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    h.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for generation (default: torch's choice, one per core); on a shared "
        "machine fewer threads can be much faster",
    )
    h.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    h.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _expert_dirs(path: str) -> list[Path]:
    """An expert folder, or the expert folders directly inside a folder."""
    from ..experts import CONFIG_NAME

    folder = Path(path).expanduser()
    if (folder / CONFIG_NAME).is_file() or not folder.is_dir():
        return [folder]  # Expert.load reports a missing folder or file
    found = sorted(d for d in folder.iterdir() if (d / CONFIG_NAME).is_file())
    if not found:
        raise T2Error(f"{str(folder)!r} holds no expert (no {CONFIG_NAME} in it or in its subfolders)")
    return found


def _check_port(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise T2Error(f"--port must be between 1 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise T2Error(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    for name in ("max_batch", "queue_size", "max_tokens_limit", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise T2Error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        import uvicorn
    except ImportError:
        raise T2Error("t2 serve needs uvicorn and fastapi; run: pip install fastapi uvicorn") from None
    from ..experts import Expert
    from ..serve import create_app
    from .common import load_svf

    if args.adapt == "classifier" and not args.classifier:
        raise T2Error("--adapt classifier needs the classification expert: --classifier DIR")
    if args.adapt == "probe" and not args.router:
        raise T2Error("--adapt probe needs the early-layer router: --router DIR (made by t2 train-router)")
    _check_port(args.host, args.port)
    experts = [Expert.load(d) for path in args.experts for d in _expert_dirs(path)]
    classifier = Expert.load(args.classifier) if args.classifier else None
    router = None
    if args.router:
        from ..probe import ProbeRouter

        router = ProbeRouter.load(args.router)
    api_key = args.api_key or os.environ.get("T2_API_KEY") or None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if experts or classifier:
        model, tokenizer, svf = load_svf(args, progress=not args.no_progress)
    else:  # the base model alone needs no SVD
        from ..models import load_model

        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, progress=not args.no_progress)
        svf = None
    app = create_app(
        model,
        tokenizer,
        svf,
        experts,
        args.adapt,
        classifier,
        router=router,
        api_key=api_key,
        max_batch=args.max_batch,
        queue_size=args.queue_size,
        max_tokens_limit=args.max_tokens_limit,
        max_body_bytes=args.max_body_bytes,
        threads=args.threads,
    )
    engine = app.state.engine
    if not api_key and not _is_loopback(args.host):
        print(
            f"t2 serve: warning: listening on {args.host} without --api-key; anyone who can reach it can use it",
            file=sys.stderr,
        )
    names = ", ".join(engine.experts) or "none"
    print(
        f"t2 serve: {engine.model_id} (experts: {names}; strategy: {engine.strategy}) on "
        f"http://{args.host}:{args.port}/v1",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=5,
    )
    return 0
