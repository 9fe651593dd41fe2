"""The OpenAI-compatible protocol of ``t2 serve``: pydantic request/response models.

Requests are validated strictly (a string where a number belongs is an error, as with OpenAI)
and unknown fields are ignored; responses follow OpenAI's shapes plus one extra ``t2`` field
that says which expert (or mixture, or the base weights) answered and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import APIError

# Fields OpenAI clients may send that this server cannot honour: rejected (400) when set,
# rather than silently ignored, because the caller would otherwise trust a wrong answer.
UNSUPPORTED_CHAT_FIELDS = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "audio",
    "modalities",
    "prediction",
)
UNSUPPORTED_COMPLETION_FIELDS = ("logprobs", "echo", "suffix", "logit_bias", "best_of")

SEED_MAX = 2**63 - 1
MAX_STOPS = 4
MAX_STOP_CHARS = 256


class _Request(BaseModel):
    """Strict types, extra fields kept (so the server can name the unsupported ones)."""

    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(_Request):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is supported."""

    type: str
    text: str | None = None


class ChatMessage(_Request):
    """One chat message (``content`` as a string or as a list of text parts)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(_Request):
    """``{"include_usage": true}`` adds a last chunk with the token counts."""

    include_usage: bool = False


class _Sampling(_Request):
    """Options shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    adapt: str | None = Field(default=None, description="t2 extra: the adaptation strategy for this request")

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        """OpenAI's limit: at most 4 stop sequences (more is a 400, never silently dropped)."""
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed, got {len(value)}")
        stops = [value] if isinstance(value, str) else value or []
        if any(len(x) > MAX_STOP_CHARS for x in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return value

    def stop_list(self) -> list[str]:
        """The stop sequences as a list (empty strings dropped)."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (``prompt``: a string or a list of strings)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)


# ---------------------------------------------------------------------------------------
# Reading a request
# ---------------------------------------------------------------------------------------
def _allowed_extra(key: str, value: Any) -> bool:
    # exact types: ``logprobs: 0`` or ``top_logprobs: 0`` is a request, not an absent field (0 == False)
    if value is None or value is False or (type(value) in (list, dict) and not value):
        return True
    if key == "response_format":
        return value == {"type": "text"}
    return (key == "best_of" and type(value) is int and value == 1) or (key == "tool_choice" and value == "none")


def check_unsupported(req, names: Sequence[str]) -> None:
    """400 for a field OpenAI has and this server cannot honour (``UNSUPPORTED_*_FIELDS``), unless it is unset."""
    for key, value in (req.model_extra or {}).items():
        if key in names and not _allowed_extra(key, value):
            raise APIError(400, f"{key!r} is not supported by t2 serve", param=key, code="unsupported_parameter")


def chat_messages(req) -> tuple[list[dict[str, str]], str]:
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
                    raise APIError(
                        400,
                        f"only text content is supported, got a {part.type!r} part",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_content",
                    )
                parts.append(part.text)
            text = "\n".join(parts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    users = [m["content"] for m in out if m["role"] == "user"]
    return out, users[-1] if users else out[-1]["content"]


# ---------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------
class T2Info(BaseModel):
    """Which weights answered: ``expert`` (None = base weights), the route and the strategy."""

    expert: str | None
    route: str
    label: str
    strategy: str
    fallback: bool = False
    mixture: dict[str, Any] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    t2: T2Info


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    t2: T2Info | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None
    t2: T2Info | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    t2: T2Info | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "transformer_squared"
    t2: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
