"""Errors in the OpenAI shape: :class:`APIError` and the app's exception handlers.

Every error, ours or FastAPI's (an unknown URL, a validation error, an unexpected exception),
is answered as ``{"error": {"message", "type", "param", "code"}}`` with the right status. This
module imports FastAPI only inside :func:`install_handlers` and :func:`error_response`, so the
engine can raise :class:`APIError` without it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..errors import T2Error

log = logging.getLogger("transformer_squared.serve")


class APIError(Exception):
    """An HTTP error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client hung up while its request body was being read."""


def server_error(exc: BaseException) -> APIError:
    """The APIError to answer for ``exc``: itself, 400 for a T2Error (a usage mistake), else a 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, T2Error):
        return APIError(400, str(exc))
    return APIError(
        500,
        f"the server failed on this request ({type(exc).__name__}); see the server log",
        type="server_error",
        code="internal_error",
    )


def param_from_loc(loc: Sequence[Any]) -> str | None:
    """``('messages', 0, 'content', 'str')`` → ``messages[0].content`` (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            isinstance(part, str)
            and part.isidentifier()
            and part not in ("str", "int", "float", "bool", "list", "dict", "none")
        ):
            out += ("." if out else "") + part
        else:
            break
    return out or None


def validation_error(exc) -> APIError:
    """A 400 naming the first invalid field of a pydantic ``ValidationError``."""
    errors = exc.errors()
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return APIError(
            400,
            f"We could not parse the JSON body of your request ({first['msg']}); send valid JSON",
            code="invalid_json",
        )
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return APIError(400, "the request body must be a JSON object", code="invalid_json")
    param = param_from_loc(first["loc"])
    msgs = list(dict.fromkeys(e["msg"] for e in errors if param_from_loc(e["loc"]) == param))
    where = f"{param}: " if param else ""
    return APIError(400, f"Invalid request: {where}{'; or '.join(msgs)}", param=param, code="invalid_value")


def error_response(err: APIError):
    """The JSON response for ``err`` (its status and headers)."""
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _api_error(request, exc: APIError):
    return error_response(exc)


async def _http_error(request, exc):
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
    msg = f"Unknown request URL: {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    return error_response(APIError(exc.status_code, msg, code=code))


async def _request_validation(request, exc):
    return error_response(APIError(400, f"Invalid request: {exc.errors()[:1]}", code="invalid_value"))


async def _client_gone(request, exc: ClientGone):
    from fastapi.responses import Response

    return Response(status_code=499)  # nobody is listening: no log, no traceback


async def _unexpected(request, exc: Exception):
    log.exception("unexpected error")
    return error_response(server_error(exc))


def install_handlers(app) -> None:
    """Answer every error of ``app`` in the OpenAI shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
