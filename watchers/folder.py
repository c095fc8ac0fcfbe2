"""A watched folder: staff drop scans in, each is answered with the folder's prompt, sidecars appear.

The way users need it (paperless-ngx's issue tracker is the map): native events where the OS delivers them,
`polling = true` for SMB/NFS shares where inotify never fires, a scan at start-up for files dropped while the
service was down, a periodic rescan as a safety net, and a stability check before a file is taken. What each
settled file needs is decided by `watchers.intake` against the recorded file states; staff files are only
read.

It never stops silently. The watcher's loop runs under a `Supervisor`: an exception is logged with the
folder and the loop restarts with backoff (after too many crashes it is `failed` and `/health` answers 503).
A folder that disappears (an unmounted share) makes the watch `unavailable` until it is back. A database
that cannot be written (disk full, read-only) is waited out: the files of that moment are looked at again
once storage works, so nothing dropped meanwhile is lost.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from service.config import WatchConfig
from service.errors import StorageUnavailable
from service.files import display_path
from service.jobs import Job, JobStatus
from service.messages import msg
from service.queue import JobQueue
from service.retry import Backoff
from service.sidecars.output import (
    append_to_catalogue,
    catalogue_key,
    catalogue_keys,
    remove_temporary_files,
    write_sidecars_for_job,
)
from service.supervisor import ComponentStatus, Supervisor
from watchers.intake import SOURCE, FileIntake
from watchers.native import native_observer
from watchers.scanning import FolderRules
from watchers.stability import StabilityTracker

log = logging.getLogger(f"tuwen.{__name__}")

# A watcher that crashes this often within ten minutes gives up (and /health says so).
MAX_RESTARTS = 10
RESTART_WINDOW_SECONDS = 600.0
FOLDER_CHECK_SECONDS = 10.0
# With several nodes on one database, other nodes answer this folder's backlog too: this often the watcher
# writes the sidecars and catalogue rows of what they finished (looking back a little, for clock skew).
ELSEWHERE_SECONDS = 2.0
ELSEWHERE_OVERLAP = timedelta(seconds=10)
# Settled files are taken this many at a time: their new jobs are one write transaction (watchers/intake.py).
TAKE_ROUND = 100


class FolderGone(Exception):
    """The watched folder is not there any more (an unmounted share); wait for it to come back."""


class FolderWatcher:
    """One `[[watch]]` entry, a `Source`."""

    def __init__(self, watch: WatchConfig, queue: JobQueue, *, max_file_mb: int = 200) -> None:
        self.watch = watch
        self.queue = queue
        self.name = f"watch:{watch.key}"
        self.root = watch.path
        self.rules = FolderRules(watch)
        self.intake = FileIntake(watch, queue, max_file_mb)
        self.tracker = StabilityTracker(watch.stable_seconds)
        self._observer: BaseObserver | None = None
        self._scan_requested = threading.Event()
        self._first_scan_done = False
        self._elsewhere_since = datetime.now(UTC)
        self._elsewhere_seen: dict[int, datetime] = {}  # job id → finished_at, within the overlap
        self.supervisor = Supervisor(
            self.name,
            self._run,
            backoff=Backoff(base=1.0, cap=60.0),
            max_restarts=MAX_RESTARTS,
            window_seconds=RESTART_WINDOW_SECONDS,
        )
        queue.add_finished_listener(self._on_finished)
        queue.add_updated_listener(self._on_updated)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watcher's supervised thread; it repairs sidecars, scans the backlog, then watches."""
        self.supervisor.start()

    def stop(self) -> None:
        """Stop watching; files not yet taken are found again by the start-up scan next time."""
        self.supervisor.stop(timeout=10)
        self._stop_observer()

    def status(self) -> ComponentStatus:
        """The watch's state for `/health` and `/metrics`."""
        s = self.supervisor
        return ComponentStatus(self.name, "watch", s.state, s.restarts, s.error, s.since)

    def _run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if not self._wait_for_folder(stop):
                    return
                try:
                    self._watch(stop)
                except FolderGone:
                    self._stop_observer()
                    continue
        finally:
            self._stop_observer()

    def _wait_for_folder(self, stop: threading.Event) -> bool:
        backoff = Backoff(base=1.0, cap=min(self.watch.rescan_seconds, 10.0))
        logged = False
        while not self.root.is_dir():
            reason = str(msg("watch_missing", path=display_path(self.root)))
            self.supervisor.mark("unavailable", reason)
            if not logged:
                log.error("%s", reason)
                logged = True
            if backoff.wait(stop):
                return False
        if logged:
            log.info("watched folder %s is available again", display_path(self.root))
        return True

    def _watch(self, stop: threading.Event) -> None:
        self.intake.load()
        self._elsewhere_since = datetime.now(UTC)
        self.repair_sidecars()
        self._start_observer()
        self.supervisor.mark("running")
        tick = min(0.5, max(0.05, self.watch.stable_seconds / 4))
        clock = next_scan = next_check = next_elsewhere = 0.0
        while not stop.is_set():
            if clock >= next_check:
                if not self.root.is_dir():
                    raise FolderGone()
                next_check = clock + FOLDER_CHECK_SECONDS
            if clock >= next_elsewhere:
                self.record_finished_elsewhere()
                next_elsewhere = clock + ELSEWHERE_SECONDS
            if clock >= next_scan or self._scan_requested.is_set():
                self._scan_requested.clear()
                self.scan()
                next_scan = clock + self.watch.rescan_seconds
            self._take_settled(stop)
            stop.wait(tick)
            clock += tick

    def _take_settled(self, stop: threading.Event) -> None:
        settled = []
        for path, _ in self.tracker.poll():
            st = self.rules.regular_file(path)
            if st is not None and self.rules.is_candidate(path):
                settled.append((path, st))
        backoff: Backoff | None = None
        for start in range(0, len(settled), TAKE_ROUND):
            round_ = settled[start : start + TAKE_ROUND]
            while not stop.is_set():
                try:
                    self.intake.take_many(round_)
                    if backoff is not None:
                        self.supervisor.mark("running")
                    break
                except StorageUnavailable as exc:
                    # Store.health logged it once; these files (and the rest) wait until storage works.
                    self.supervisor.mark("unavailable", str(exc.message))
                    backoff = backoff or Backoff(base=1.0, cap=30.0)
                    backoff.wait(stop)
            if stop.is_set():
                for path, _ in settled[start:]:
                    self.tracker.touch(path)  # not taken: the next start's scan finds them
                return

    def _start_observer(self) -> None:
        observer: BaseObserver = (
            PollingObserver(timeout=self.watch.poll_interval_seconds)
            if self.watch.polling
            else native_observer(self.rules.named_like_a_scan)
        )
        observer.schedule(
            _Handler(self), str(self.root), recursive=self.watch.recursive, event_filter=list(_EVENTS)
        )
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info(
            "watching %s (%s, prompt %r)",
            display_path(self.root),
            "polling" if self.watch.polling else "native events",
            self.watch.prompt,
        )

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout=5)
            except Exception:
                log.exception("%s: stopping the file observer failed", self.name)

    # -- finding files ----------------------------------------------------------------------------

    def is_candidate(self, path: Path) -> bool:
        """Whether `path` (inside the root) is named like a file this watch should answer."""
        return self.rules.is_candidate(path)

    def scan(self) -> int:
        """Walk the folder and start tracking every file not as recorded. Returns the count."""
        found = 0
        for base, names in self.rules.walk():
            for name in names:
                path = base / name
                if not self.rules.is_candidate(path) or path in self.tracker:
                    continue
                st = self.rules.regular_file(path)
                if st is None or self.intake.unchanged(path, st):
                    continue
                self.tracker.touch(path)
                found += 1
        self._first_scan_done = True
        if found:
            log.info("%s: %d new or changed file(s) found by scan", self.name, found)
        return found

    def request_scan(self) -> None:
        """Ask the watcher's own thread to rescan soon."""
        self._scan_requested.set()

    def on_event_path(self, path: Path) -> None:
        """A native or polled event for `path`."""
        if self.rules.is_candidate(path):
            self.tracker.touch(path)

    # -- sinks ----------------------------------------------------------------------------------

    def _mine(self, job: Job) -> bool:
        return job.source == SOURCE and job.source_ref == self.watch.key and bool(job.file_path)

    def _on_finished(self, job: Job) -> None:
        if not self._mine(job):
            return
        write_sidecars_for_job(job, self.watch)
        if self.watch.catalogue and append_to_catalogue(job, self.watch):
            self.queue.mark_catalogued(job.id)

    def record_finished_elsewhere(self) -> int:
        """Write the sidecars and catalogue rows of this folder's jobs that other nodes finished lately."""
        now = datetime.now(UTC)
        try:
            jobs = self.queue.finished_elsewhere(
                SOURCE, self.watch.key, self._elsewhere_since - ELSEWHERE_OVERLAP
            )
        except StorageUnavailable:
            return 0  # Store.health reports it; the next round looks back from the same moment
        written = 0
        for job in jobs:
            if job.id in self._elsewhere_seen or job.finished_at is None:
                continue
            self._elsewhere_seen[job.id] = job.finished_at
            latest = self.queue.latest_finished_job_for_file(SOURCE, self.watch.key, job.file_path or "")
            if latest is not None and latest.id == job.id and job.images and Path(job.images[0]).exists():
                try:
                    write_sidecars_for_job(job, self.watch)
                    if self.watch.catalogue and not job.catalogued and append_to_catalogue(job, self.watch):
                        self.queue.mark_catalogued(job.id)
                    written += 1
                except Exception:
                    log.exception("%s: the sidecars of job %s failed", self.name, job.uid[:8])
        cutoff = self._elsewhere_since - ELSEWHERE_OVERLAP
        self._elsewhere_seen = {i: at for i, at in self._elsewhere_seen.items() if at >= cutoff}
        self._elsewhere_since = now
        return written

    def _on_updated(self, job: Job) -> None:
        """A reviewed job: rewrite its JSON and XMP with the correction (the catalogue is append-only)."""
        if not self._mine(job):
            return
        # Only the newest answer for the file owns its sidecars: a review of an older job (the file was
        # answered again since) must not put stale text back. A scan moved away gets no orphan sidecars.
        latest = self.queue.latest_finished_job_for_file(SOURCE, self.watch.key, job.file_path or "")
        real = Path(job.images[0]) if job.images else None
        if latest is None or latest.id != job.id or real is None or not real.exists():
            log.info("reviewed job %s: its sidecars show a newer job or the scan is gone", job.uid[:8])
            return
        write_sidecars_for_job(job, self.watch)

    def repair_sidecars(self) -> int:
        """At start: remove temporary files a kill left, rewrite missing sidecars and catalogue rows.

        Never dies on one file: each is handled on its own, and a failure is logged and skipped.
        """
        removed = 0
        for folder in {self.root, self.watch.output_dir or self.root}:
            if folder.is_dir():
                removed += remove_temporary_files(folder)
        if removed:
            log.info("%s: removed %d temporary file(s) left by an interrupted write", self.name, removed)
        repaired = 0
        for job in self.queue.finished_file_jobs(SOURCE, self.watch.key):
            try:
                real = Path(job.images[0]) if job.images else None
                if (
                    real is not None
                    and os.path.lexists(real)
                    and job.status in (JobStatus.DONE, JobStatus.FAILED)
                ):
                    repaired += write_sidecars_for_job(job, self.watch, only_if_missing=True)
            except Exception:
                log.exception("%s: repairing the sidecars of job %s failed", self.name, job.uid[:8])
        if self.watch.catalogue:
            repaired += self._repair_catalogue()
        if repaired:
            log.info(
                "%s: rewrote %d missing sidecar(s) or catalogue row(s) from the database", self.name, repaired
            )
        return repaired

    def _repair_catalogue(self) -> int:
        """Append the rows a crash kept from the catalogue (a row already there is only marked as such)."""
        pending = self.queue.uncatalogued_jobs(SOURCE, self.watch.key)
        if not pending:
            return 0
        present = catalogue_keys(self.watch)
        appended = 0
        for job in pending:
            try:
                key = catalogue_key(job, self.watch)
                if key in present or append_to_catalogue(job, self.watch):
                    appended += key not in present
                    self.queue.mark_catalogued(job.id)
            except Exception:
                log.exception("%s: the catalogue row of job %s could not be repaired", self.name, job.uid[:8])
        return appended


# The events `_Handler` acts on, and so the only ones inotify is asked for. Not "opened" or "closed without
# writing": each scan is opened twice to be hashed and read and each sidecar once, and those events (two
# per open) were a good share of the watcher's own time in a large backlog, for nothing. Not "modified"
# either (one per write call, and "attrib" comes with it): a writer's last write is followed by "closed",
# and whether a file is still changing is the stability tracker's stat, not the events.
_EVENTS = (
    FileCreatedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirMovedEvent,
)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher
        self.rules = watcher.rules

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                # A folder copied or moved in at once: its files may raise no events of their own.
                self.watcher.request_scan()
            return
        target = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
        # Most events in a busy folder are of our own sidecars (three for each): rejected by name alone,
        # before a Path is built.
        if event.event_type in ("created", "moved", "closed") and self.rules.named_like_a_scan(
            target.rpartition(os.sep)[2]
        ):
            self.watcher.on_event_path(Path(target))
