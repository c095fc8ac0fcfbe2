"""What every event source (watched folder, chat bot, ...) looks like to the service lifecycle."""

from __future__ import annotations

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
