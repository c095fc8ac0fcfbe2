"""The three kinds of failure a job can meet, each carrying a catalogue message.

- `PermanentError`: retrying cannot help (an undecodable image). The job fails at once.
- `TransientError`: the world may change (remote server down, GPU busy). The job is retried with backoff.
- `OutOfMemoryError`: a transient error that also asks the worker to shrink its batch.
"""

from __future__ import annotations

from service.messages import Message


class TuwenError(Exception):
    """Base class: an error with a bilingual, user-facing message."""

    def __init__(self, message: Message) -> None:
        super().__init__(str(message))
        self.message = message

    @property
    def code(self) -> str:
        """The catalogue code, stored in the job record."""
        return self.message.code


class PermanentError(TuwenError):
    """Retrying cannot help; the job fails at once with this message."""


class TransientError(TuwenError):
    """The job should be retried later with backoff."""


class OutOfMemoryError(TransientError):
    """The accelerator ran out of memory; retry with a smaller batch."""


class ConfigError(Exception):
    """The configuration is invalid; `lines` hold one 'key.path: value reason' line per problem."""

    def __init__(self, source: str, lines: list[str]) -> None:
        super().__init__(f"{source}:\n" + "\n".join(lines))
        self.source = source
        self.lines = lines


class StorageUnavailable(TransientError):
    """The database cannot be written right now: the disk is full, it is read-only or it is locked.

    Transient: the worker and the watchers wait and try again with backoff, and resume by themselves once
    storage is writable again. `kind` is "disk_full", "read_only", "busy" or "io".
    """

    def __init__(self, message: Message, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class StartupError(Exception):
    """`tuwen serve` cannot start (database, data folder or port unusable): say why, exit non-zero."""

    def __init__(self, message: Message) -> None:
        super().__init__(str(message))
        self.message = message


class QueueFull(Exception):
    """Too many interactive jobs are waiting; try again after `retry_after` seconds."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"{limit} interactive jobs waiting")
        self.limit = limit
        self.retry_after = retry_after


class WorkerUnavailable(Exception):
    """No model worker can answer now (loading failed, crashed for good, or the service is stopping)."""
