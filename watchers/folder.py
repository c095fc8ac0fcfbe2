"""A watched folder: staff drop scans in, each is answered with the folder's prompt, sidecars appear.

The way users need it (paperless-ngx's issue tracker is the map): native events where the OS delivers them,
`polling = true` for SMB/NFS shares where inotify never fires, a scan at start-up for files dropped while the
service was down, a periodic rescan as a safety net, a stability check before a file is taken, and a record
of every file state we have seen so a stray event never queues a file twice. Staff files are only read.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from db.models import Job, JobStatus
from service.config import WatchConfig
from service.errors import PermanentError
from service.events import Event, Priority
from service.images import sha256_file
from service.messages import msg
from service.queue import JobQueue
from watchers.output import write_sidecars_for_job
from watchers.stability import StabilityTracker

log = logging.getLogger("tuwen.watch")

SOURCE = "watch"


class FolderWatcher:
    """One `[[watch]]` entry."""

    def __init__(self, watch: WatchConfig, queue: JobQueue) -> None:
        self.watch = watch
        self.queue = queue
        self.name = f"watch:{watch.key}"
        self.root = watch.path
        self.tracker = StabilityTracker(watch.stable_seconds)
        self._seen: dict[str, tuple[int, float]] = {}
        self._observer: BaseObserver | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._missing_logged = False
        self._scan_requested = threading.Event()
        queue.add_finished_listener(self._on_finished)
        queue.add_updated_listener(self._on_updated)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Repair missing sidecars, scan for the backlog, then watch."""
        self._thread = threading.Thread(target=self._run, name=f"tuwen-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; files not yet taken are found again by the start-up scan next time."""
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        tick = min(0.5, max(0.05, self.watch.stable_seconds / 4))
        next_scan = 0.0
        clock = 0.0
        while not self._stop.is_set():
            if self._observer is None and not self._try_start_observer():
                self._stop.wait(min(self.watch.rescan_seconds, 10))
                continue
            if clock >= next_scan or self._scan_requested.is_set():
                self._scan_requested.clear()
                self.scan()
                next_scan = clock + self.watch.rescan_seconds
            for path, st in self.tracker.poll():
                self._consider(path, st)
            self._stop.wait(tick)
            clock += tick

    def _try_start_observer(self) -> bool:
        if not self.root.is_dir():
            if not self._missing_logged:
                log.error("%s", msg("watch_missing", path=self.root))
                self._missing_logged = True
            return False
        if self._missing_logged:
            log.info("watched folder %s is available again", self.root)
        self.repair_sidecars()
        observer: BaseObserver = (
            PollingObserver(timeout=self.watch.poll_interval_seconds) if self.watch.polling else Observer()
        )
        observer.schedule(_Handler(self), str(self.root), recursive=self.watch.recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info(
            "watching %s (%s, prompt %r)",
            self.root,
            "polling" if self.watch.polling else "native events",
            self.watch.prompt,
        )
        return True

    # -- deciding what to take ---------------------------------------------------------------------

    def is_candidate(self, path: Path) -> bool:
        """Whether `path` (inside the root) is a file this watch should answer."""
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return False
        parts = relative.parts
        if not parts or (not self.watch.recursive and len(parts) > 1):
            return False
        if self.watch.output_dir is not None and path.is_relative_to(self.watch.output_dir):
            return False
        ignores = self.watch.all_ignores
        if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in ignores):
            return False
        return any(fnmatch.fnmatch(parts[-1], pattern) for pattern in self.watch.include)

    def scan(self) -> int:
        """Walk the folder and start tracking every file we have not seen in this state. Returns the count."""
        found = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            base = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames if self.watch.recursive and self.is_candidate_dir(base / d)
            )
            for filename in sorted(filenames):
                path = base / filename
                if not self.is_candidate(path) or path in self.tracker:
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue
                if self._already_seen(path, st.st_size, st.st_mtime):
                    continue
                self.tracker.touch(path)
                found += 1
        if found:
            log.info("%s: %d new or changed file(s) found by scan", self.name, found)
        return found

    def is_candidate_dir(self, path: Path) -> bool:
        """Whether to descend into `path` (ignored folders such as @eaDir and our output tree are skipped)."""
        if self.watch.output_dir is not None and path == self.watch.output_dir:
            return False
        return not any(fnmatch.fnmatch(path.name, pattern) for pattern in self.watch.all_ignores)

    def _already_seen(self, path: Path, size: int, mtime: float) -> bool:
        key = str(path)
        if self._seen.get(key) == (size, mtime):
            return True
        if self.queue.store.has_file_state(key, size, mtime):
            self._seen[key] = (size, mtime)
            return True
        return False

    def _consider(self, path: Path, st: os.stat_result) -> None:
        if not self.is_candidate(path) or self._already_seen(path, st.st_size, st.st_mtime):
            return
        key = str(path)
        try:
            digest = sha256_file(path)
        except PermanentError as exc:  # a FIFO, socket or device named like a scan: never to be read
            log.warning("%s: skipping %s: %s", self.name, path, exc.message.en)
            self._seen[key] = (st.st_size, st.st_mtime)
            return
        except OSError as exc:
            log.warning("%s: cannot read %s yet (%s); will look again", self.name, path, exc)
            self.tracker.touch(path)
            return
        self._seen[key] = (st.st_size, st.st_mtime)
        if self.queue.store.active_job_for_file(key, digest) is not None:
            return
        event = Event(
            source=SOURCE,
            source_ref=self.watch.key,
            question=self.watch.prompt,
            images=(key,),
            priority=Priority.BACKLOG,
            sha256=digest,
            file_size=st.st_size,
            file_mtime=st.st_mtime,
        )
        self.queue.submit(event, dedup=True)

    def request_scan(self) -> None:
        """Ask the watcher's own thread to rescan soon."""
        self._scan_requested.set()

    def on_event_path(self, path: Path) -> None:
        """A native or polled event for `path`."""
        if self.is_candidate(path):
            self.tracker.touch(path)

    # -- sinks ----------------------------------------------------------------------------------

    def _on_finished(self, job: Job) -> None:
        if job.source != SOURCE or job.source_ref != self.watch.key or not job.file_path:
            return
        write_sidecars_for_job(job, self.watch, catalogue=True)

    def _on_updated(self, job: Job) -> None:
        """A reviewed job: rewrite its JSON and XMP with the correction (the catalogue is append-only)."""
        if job.source != SOURCE or job.source_ref != self.watch.key or not job.file_path:
            return
        # Only the newest answer for the file owns its sidecars: a review of an older job (the file was
        # answered again since) must not put stale text back. A scan moved away gets no orphan sidecars.
        latest = self.queue.store.latest_finished_job_for_file(SOURCE, self.watch.key, job.file_path)
        if latest is None or latest.id != job.id or not Path(job.file_path).exists():
            log.info("[job %s] reviewed; its sidecars show a newer job or the scan is gone", job.uid[:8])
            return
        write_sidecars_for_job(job, self.watch, catalogue=False)

    def repair_sidecars(self) -> int:
        """Rewrite sidecars of finished jobs whose JSON sidecar is missing (a crash between DB and disk)."""
        repaired = 0
        for job in self.queue.store.finished_jobs_for_source(SOURCE, self.watch.key):
            if job.status not in (JobStatus.DONE, JobStatus.FAILED) or not job.file_path:
                continue
            if not Path(job.file_path).exists():
                continue
            if write_sidecars_for_job(job, self.watch, catalogue=False, only_if_missing=True):
                repaired += 1
        if repaired:
            log.info("%s: rewrote %d missing sidecar(s) from the database", self.name, repaired)
        return repaired


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                # A folder copied or moved in at once: its files may raise no events of their own.
                self.watcher.request_scan()
            return
        target = getattr(event, "dest_path", "") or event.src_path
        if event.event_type in ("created", "modified", "moved", "closed", "attrib"):
            self.watcher.on_event_path(Path(os.fsdecode(target)))
