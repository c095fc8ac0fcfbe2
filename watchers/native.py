"""Native file events (Linux inotify), with the events of files no watch would take dropped where they arrive.

In a busy watched folder most inotify events are of tuwen's own writes: every sidecar is written as a
temporary file and renamed (created, closed, moved from, moved to: four events), two sidecars per scan,
against the two events of the scan itself. watchdog turns each raw event into a path, pairs the moves
through a delayed queue, builds event objects (with a "directory modified" beside most) and hands them to
the handler over two more queues, all in Python, and only then could the handler reject a sidecar by name:
that was a third of the service's own time at its ceiling. Here the name test (`FolderRules.
named_like_a_scan`, the handler's own first test) runs on the raw event, so a sidecar's events cost a
bytes-to-str decode and one regex match each.

What this changes for the handler: nothing it would have acted on. A file renamed from a name no watch
takes to a scan's name (a scanner writing `x.tmp` and renaming it to `x.jpg`) loses its "moved from" half
and arrives as "created", which the handler treats the same. Directories' events are all kept (a folder
moved in is scanned).

This leans on watchdog's Linux internals (`InotifyWatchGroup.on_event`, the emitter's `on_thread_start`):
`pyproject.toml` pins the major version, and `tests/test_watcher.py` fails if sidecar events reach the
handler or if scans stop arriving. Elsewhere (macOS, Windows, polling) watchdog's own observers are used.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watchdog.observers import Observer
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver

log = logging.getLogger(f"tuwen.{__name__}")

NameTest = Callable[[str], bool]


def _take_every_name(name: str) -> bool:
    return True


try:
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyEvent, InotifyFD
except ImportError:  # not Linux: watchdog has no inotify module to lean on
    InotifyObserver = None  # type: ignore[assignment,misc]


def native_observer(wanted: NameTest) -> BaseObserver:
    """An observer of native events that drops the events of files whose name fails `wanted`."""
    if InotifyObserver is None or not sys.platform.startswith("linux"):
        return Observer()
    try:
        return _ScanEventsObserver(wanted)
    except (TypeError, AttributeError):  # watchdog's internals moved: every event reaches the handler
        log.warning("watchdog %s: sidecar events are filtered by the handler instead", _watchdog_version())
        return Observer()


def _watchdog_version() -> str:
    from watchdog.version import VERSION_STRING

    return VERSION_STRING


if InotifyObserver is not None:

    @dataclass
    class _ScanEventsGroup(InotifyWatchGroup):
        """watchdog's watch group for one folder, refusing a file's event by its name before all else."""

        wanted: NameTest = _take_every_name

        def on_event(self, event: InotifyEvent) -> None:
            if event.name and not event.is_directory and not self.wanted(os.fsdecode(event.name)):
                return
            super().on_event(event)

    class _ScanEventsEmitter(InotifyEmitter):
        """watchdog's inotify emitter with `_ScanEventsGroup` as its watch group."""

        def __init__(self, *args: Any, wanted: NameTest, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._wanted = wanted

        def on_thread_start(self) -> None:
            # As InotifyEmitter.on_thread_start, with the name test handed to the group.
            self._inotify = _ScanEventsGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
                wanted=self._wanted,
            )

    class _ScanEventsObserver(InotifyObserver):
        """watchdog's inotify observer building `_ScanEventsEmitter`s (BaseObserver's emitter kwargs)."""

        def __init__(self, wanted: NameTest, *, timeout: float = DEFAULT_OBSERVER_TIMEOUT) -> None:
            # As InotifyObserver.__init__ with another emitter class: its own InotifyFD, stopped by
            # InotifyObserver.on_thread_stop.
            self._inotify_fd = InotifyFD()
            self._inotify_fd.start()
            BaseObserver.__init__(
                self, _ScanEventsEmitter, timeout=timeout, inotify_fd=self._inotify_fd, wanted=wanted
            )
