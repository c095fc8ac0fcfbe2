"""OpenAI's chat shapes: the request read with a size cap, validated and turned into a conversation; the
response, chunk and error bodies built from a finished job.

Kept apart from `openai_api` (which admits, queues, waits and streams) so each stays small; everything here
is pure, with 400/413 refusals raised as `Refused`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from db.models import Job
from service.config import DEFAULT_QUESTION
from service.events import ChatTurn, GenerationOptions
from service.http.errors import ApiError, error_response
from service.messages import Message, msg, render


class _ImageURL(BaseModel):
    url: str


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    image_url: _ImageURL | str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part] | None = None


class _StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat request as far as tuwen reads it.

    Fields that would change what the answer means and that no backend here can honour (`tools`,
    `tool_choice`, `response_format` other than text, `n` > 1, `logprobs`, audio) are refused by
    `refuse_unsupported` with a 400 naming the field; a client silently getting a plain answer to a tool
    call would be worse. Harmless ones (`user`, `seed`, `top_p`, `stop`, penalties) are passed on to backends
    that use them and otherwise have no effect; anything else unknown is ignored, as OpenAI's servers do.
    """

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None
    stream: bool = Field(False, strict=True)  # "yes" is a mistake, not a wish to stream
    stream_options: _StreamOptions | None = None
    n: int = Field(1, ge=1)
    knowledge_base_id: str | int | None = None
    # tuwen's own switch (GLM-4.6V reasons by default in vLLM/SGLang); also read from chat_template_kwargs.
    enable_thinking: bool | None = None

    def options(self) -> GenerationOptions:
        """The generation options the client asked for."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        thinking = self.enable_thinking
        template = (self.model_extra or {}).get("chat_template_kwargs")
        if (
            thinking is None
            and isinstance(template, dict)
            and isinstance(template.get("enable_thinking"), bool)
        ):
            thinking = template["enable_thinking"]
        return GenerationOptions(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(s for s in stop if s)[:4],
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            thinking=thinking,
        )


@dataclass(frozen=True)
class Conversation:
    """What the job needs from the messages."""

    question: str
    history: tuple[ChatTurn, ...]
    image_urls: tuple[str, ...]


class Refused(ApiError):
    """An `ApiError` that also says which rejection reason the metrics count."""

    def __init__(self, status: int, message: Message, reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(status, message, **kwargs)
        self.reason = reason


def bad(reason: str, param: str | None = None) -> Refused:
    """A 400 saying what is wrong with the request (catalogue code `api_bad_request`)."""
    return Refused(400, msg("api_bad_request", reason=reason), param=param)


async def read_body(request: Request, limit: int, limit_mb: float, timeout: float = 60.0) -> bytes:
    """The body, refused with 413 once it passes `limit` bytes, whatever Content-Length claimed, and with
    408 when it has not all arrived within `timeout` seconds (a client trickling bytes holds a connection
    and, before this, a queue slot)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, msg("api_too_large", limit_mb=f"{limit_mb:g}"))
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise Refused(413, msg("api_too_large", limit_mb=f"{limit_mb:g}"))
    except TimeoutError:
        raise Refused(408, msg("api_body_timeout", seconds=f"{timeout:g}"), reason="timeout") from None
    return bytes(body)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a chat request body; 400 with the first problem otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Refused(400, msg("api_bad_json")) from exc
    if not isinstance(data, dict):
        raise bad("the body must be a JSON object")
    refuse_unsupported(data)
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise bad(f"{where}: {first['msg']}", param=where or None) from exc
    except RecursionError as exc:
        raise bad("the body is nested too deeply") from exc


def refuse_unsupported(data: dict[str, Any]) -> None:
    """400 naming the first field that asks for something no backend here can do (see `ChatRequest`)."""

    def refuse(param: str, what: str) -> Refused:
        return Refused(400, msg("api_unsupported", param=param, what=what), param=param)

    if data.get("tools"):
        raise refuse("tools", "tool calls")
    if data.get("functions"):
        raise refuse("functions", "function calls")
    choice = data.get("tool_choice")
    if choice not in (None, "none", "auto"):
        raise refuse("tool_choice", "tool calls")
    response_format = data.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else response_format
        if kind != "text":
            raise refuse("response_format", f"response_format {kind!r} (only 'text')")
    n = data.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        raise refuse("n", "more than one choice (n > 1)")
    if data.get("logprobs") or data.get("top_logprobs"):
        raise refuse("logprobs", "log probabilities")
    modalities = data.get("modalities")
    if data.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise refuse("audio", "audio output")
    for index, message in enumerate(data.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for number, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in (None, "text", "image_url"):
                where = f"messages.{index}.content.{number}.type"
                raise refuse(where, f"content of type {kind!r} (text and image_url only)")


def conversation_of(chat: ChatRequest, max_images: int = 1000) -> Conversation:
    """The question, earlier turns and image URLs of a chat request (400 when it cannot be a job)."""
    turns: list[tuple[str, str, list[str]]] = []
    for index, message in enumerate(chat.messages):
        if message.role in ("system", "developer"):
            continue  # see the module docstring
        text, urls = _content(message, index)
        if urls and message.role != "user":
            raise bad("images are accepted in user messages only", param=f"messages.{index}.content")
        turns.append((message.role, text, urls))
    if not turns or turns[-1][0] != "user":
        raise bad("the last message must be a user message", param="messages")
    _, question, last_urls = turns[-1]
    if not question.strip() and not last_urls:
        raise bad("the last user message has neither text nor an image", param="messages")
    ordered = tuple(dict.fromkeys(url for _, _, turn_urls in turns for url in turn_urls))  # in order, once
    if len(ordered) > max_images:
        raise Refused(400, msg("api_too_many_images", count=len(ordered), limit=max_images), param="messages")
    history = tuple(ChatTurn(role, text) for role, text, _ in turns[:-1])
    return Conversation(
        question=question if question.strip() else DEFAULT_QUESTION, history=history, image_urls=ordered
    )


def _content(message: _Message, index: int) -> tuple[str, list[str]]:
    if message.content is None or isinstance(message.content, str):
        return message.content or "", []
    texts: list[str] = []
    urls: list[str] = []
    for number, part in enumerate(message.content):
        where = f"messages.{index}.content.{number}"
        if part.type not in ("text", "image_url"):
            raise bad(f"{where}.type {part.type!r} is not supported", param=where)
        if part.type == "text":
            if part.text is None:
                raise bad(f"{where}.text is missing", param=where)
            texts.append(part.text)
        else:
            image = part.image_url
            if image is None:
                raise bad(f"{where}.image_url is missing", param=where)
            urls.append(image if isinstance(image, str) else image.url)
    return "\n".join(texts), urls


def finish_reason(job: Job, max_new_tokens: int) -> str:
    """ "length" when the answer was cut at its token (or, for OCR, character) limit, else "stop"."""
    if job.finish_reason:
        return job.finish_reason
    # Jobs recorded before finish_reason was: a model answer that used every token it was allowed.
    if job.backend != "ocr" and (job.completion_tokens or 0) >= max_new_tokens:
        return "length"
    return "stop"


def usage_of(job: Job) -> dict[str, int]:
    """OpenAI's usage object, with the input/output names some newer clients read."""
    prompt, completion = job.prompt_tokens or 0, job.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens": prompt,
        "output_tokens": completion,
    }


def completion_body(job: Job, model_name: str, created: int, max_new_tokens: int) -> dict[str, Any]:
    """A `chat.completion` for a done job."""
    message: dict[str, Any] = {"role": "assistant", "content": job.answer or ""}
    if job.reasoning:
        message["reasoning_content"] = job.reasoning  # vLLM's name for the thinking it strips
    choice = {"index": 0, "message": message, "logprobs": None}
    choice["finish_reason"] = finish_reason(job, max_new_tokens)
    return {
        "id": f"chatcmpl-{job.uid}",
        "object": "chat.completion",
        "created": created,
        "model": model_name,
        "choices": [choice],
        "usage": usage_of(job),
        "model_version": job.model_version,
        # "ocr": the text read from the image (the question was not answered); "model": a model's answer.
        "answer_kind": job.answer_kind,
    }


def job_error(job: Job) -> Message:
    """A failed job's message again, from its stored code and parameters (the stored text as fallback)."""
    return render(job.error_code, job.error_params, job.error)


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


def error_event(status: int, message: Message) -> str:
    """An error inside a stream, then the end: OpenAI's SDK raises APIError on a `data: {"error": …}`."""
    return sse(bytes(error_response(status, message).body).decode("utf-8")) + sse("[DONE]")
