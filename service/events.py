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
    extra: dict[str, object] = field(default_factory=dict)
