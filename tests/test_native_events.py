"""Native file events (watchers/native.py) on a real folder with real inotify: our own sidecars' events are
dropped where they arrive, and everything the watcher acts on still reaches it."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from service.config import WatchConfig
from service.sidecars.sidecar import atomic_write_bytes
from watchers.folder import _EVENTS
from watchers.native import native_observer
from watchers.scanning import FolderRules

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


class Recorder(FileSystemEventHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        target = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
        with self.lock:
            self.events.append((event.event_type, os.path.basename(target), event.is_directory))

    def names(self) -> set[str]:
        with self.lock:
            return {name for _, name, _ in self.events}


def wait_for(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sidecar_writes_never_reach_the_handler_and_scans_still_do(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rules = FolderRules(WatchConfig(path=inbox, recursive=True))
    recorder = Recorder()
    observer = native_observer(rules.named_like_a_scan)
    observer.schedule(recorder, str(inbox), recursive=True, event_filter=list(_EVENTS))
    observer.start()
    try:
        (inbox / "letter.jpg").write_bytes(b"a scan")  # created, then closed
        atomic_write_bytes(inbox / "letter.jpg.json", b"{}")  # a temporary file renamed: four events
        atomic_write_bytes(inbox / "letter.jpg.xmp", b"<x/>")
        (inbox / "upload.part").write_bytes(b"half")  # a scanner's temporary name, renamed when complete
        os.rename(inbox / "upload.part", inbox / "photo.png")
        (inbox / "box").mkdir()  # a folder: its events are kept (the watcher scans it)
        (inbox / "box" / "inside.tif").write_bytes(b"deeper")
        wait_for(lambda: {"letter.jpg", "photo.png", "box", "inside.tif"} <= recorder.names())
        time.sleep(0.5)  # anything else would have arrived by now
    finally:
        observer.stop()
        observer.join(5)
    assert recorder.names() == {"letter.jpg", "photo.png", "box", "inside.tif"}
    # The renamed scan lost the "moved from" half of its rename and comes as created, like a copy.
    assert ("created", "photo.png", False) in recorder.events
    assert ("created", "box", True) in recorder.events
    assert not list(inbox.glob("*.tuwen-tmp"))
