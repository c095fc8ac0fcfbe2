"""What every event source (watched folder, chat bot, ...) looks like to the service lifecycle.

`Notifier` is the other direction: a source that can also send unprompted (scheduled reports to chats).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol


class Source(Protocol):
    """A source is started after the model worker and stopped before it, in reverse start order."""

    name: str

    def start(self) -> None:
        """Begin delivering events; must not block."""
        ...

    def stop(self) -> None:
        """Stop delivering events and release threads/sockets; must return within a few seconds."""
        ...


class NotifyError(Exception):
    """A notifier could not send; `permanent` says retrying cannot help (unknown chat, bot blocked)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class Notifier(Protocol):
    """A source that can also send on its own initiative (a chat bot delivering a scheduled report).

    The App collects every source with a `platform` and a `notify` into `App.notifiers`; the service
    never imports the bots. `attachments` names what besides text it can send ("image", "document").
    """

    platform: str
    attachments: frozenset[str]

    def notify(
        self, recipient: str, text: str, *, image: Path | None = None, document: Path | None = None
    ) -> None:
        """Send `text` (if any), then `image`, then `document` to `recipient`; blocks; raises on failure.

        Safe to call from any thread but the source's own event loop.
        """
        ...


def collect_notifiers(sources: Iterable[object]) -> dict[str, Notifier]:
    """The sources that can send unprompted, by platform (duck-typed: a `platform` and a `notify`)."""
    notifiers: dict[str, Notifier] = {}
    for source in sources:
        platform = getattr(source, "platform", "")
        if platform and callable(getattr(source, "notify", None)):
            notifiers[str(platform)] = source  # type: ignore[assignment]
    return notifiers
