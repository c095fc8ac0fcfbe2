"""The one event envelope every source hands to the spine.

A folder watcher, the CLI, the HTTP API and the chat bots all turn what they received into an `Event`; the
spine never needs to know where a job came from beyond the `source` label it records.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Lower runs first: people waiting at a chat or a kiosk go before a folder backlog."""

    INTERACTIVE = 0
    CLI = 5
    BACKLOG = 10


class Source(enum.StrEnum):
    """Where a job came from (paperless-ngx's `DocumentSource`); the value is what the history records."""

    WATCH = "watch"
    CLI = "cli"
    BATCH = "batch"
    API = "api"
    WEB = "web"
    KIOSK = "kiosk"
    TELEGRAM = "telegram"
    WECHAT = "wechat"
    WECOM = "wecom"


# Sources whose question is a configured prompt about a file on disk (not a person's words in a chat).
FILE_SOURCES = frozenset({Source.WATCH, Source.BATCH, Source.CLI})


@dataclass(frozen=True)
class GenerationOptions:
    """What a caller may ask of the generation, beside the config's defaults; None = "as configured".

    The config caps what may be asked (`GenerationOptions.clamped`): an API client may ask for fewer tokens
    than `[model] max_new_tokens`, never more. Backends use what they can (the OCR backend only `max_tokens`,
    as a character limit) and ignore the rest.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    thinking: bool | None = None

    def as_dict(self) -> dict[str, object]:
        """The set options as JSON values (what the job row stores)."""
        data: dict[str, object] = {}
        for name in (
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "thinking",
        ):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.stop:
            data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> GenerationOptions:
        """The options a job row stored (unknown keys ignored: rows outlive versions)."""
        data = data or {}

        def number(name: str) -> float | None:
            value = data.get(name)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        max_tokens, seed = number("max_tokens"), number("seed")
        stop = data.get("stop")
        thinking = data.get("thinking")
        return cls(
            max_tokens=int(max_tokens) if max_tokens is not None else None,
            temperature=number("temperature"),
            top_p=number("top_p"),
            seed=int(seed) if seed is not None else None,
            stop=tuple(str(s) for s in stop) if isinstance(stop, list) else (),
            presence_penalty=number("presence_penalty"),
            frequency_penalty=number("frequency_penalty"),
            thinking=thinking if isinstance(thinking, bool) else None,
        )


@dataclass(frozen=True)
class ChatTurn:
    """One earlier turn of a conversation (follow-up questions)."""

    role: str  # "user" | "assistant"
    text: str


@dataclass(frozen=True)
class Event:
    """Something to answer: images plus a question, from one source.

    `images` are paths the spine may read (the staff's scan, or an upload the source stored under
    data_dir). `source` is a short label ("watch", "cli", "batch", "api", "kiosk", "telegram", ...) and
    `source_ref` names the instance (a watch name, a chat id). `reply_to` is opaque to the spine and handed
    back to the source with the result.
    """

    source: str
    question: str
    images: tuple[str, ...]
    source_ref: str = ""
    priority: Priority = Priority.BACKLOG
    conversation_id: str | None = None
    history: tuple[ChatTurn, ...] = ()
    reply_to: str | None = None
    sha256: str | None = None
    file_size: int | None = None
    file_mtime: float | None = None
    # Things a person should know about the job that are not failures: ({"code", "params"}, ...).
    notes: tuple[dict[str, object], ...] = ()
    options: GenerationOptions = field(default_factory=GenerationOptions)
    # Who asked, as far as the source knows: recorded for the history, never used to answer.
    client_model: str | None = None  # the `model` an API client sent
    knowledge_base_id: str | None = None
    user_id: str | None = None  # a chat platform's user id
    request_id: str | None = None  # the HTTP request's X-Request-ID
