"""What to do with a file that has settled in a watched folder: nothing, a state update, a move, or a job.

One scan, one record. Against the watch's recorded file states (loaded once at start):
- size, mtime, ctime and inode as recorded: nothing happened;
- same content (touched, re-copied by a sync tool or a backup): only the recorded state is updated; no job,
  sidecars left byte-for-byte as they are (written again only if someone deleted them). The one exception is
  an answer that is stale: the folder's prompt changed, or it came from another model than the one loaded now;
- same content as a recorded file whose path no longer exists: a rename; the record, the history row and the
  sidecars move with it;
- otherwise (new, or different content): a job.

A file that cannot be read or is refused before any job (too large, an unexpected error) gets a failed job
in the history (and so a failure sidecar) and its state recorded, so it is skipped until it changes instead
of being tried again in a loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from service.config import WatchConfig
from service.errors import PermanentError, StorageUnavailable
from service.events import Event, GenerationOptions, Priority, Source
from service.files import display_path
from service.images import sha256_file
from service.jobs import FileRow, FileSeen, Job, JobStatus
from service.messages import Message, msg
from service.queue import JobQueue, prompt_hash
from service.sidecars.output import move_sidecars, sidecar_stem, write_sidecars_for_job

log = logging.getLogger(f"tuwen.{__name__}")

SOURCE = Source.WATCH


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """The parts of a stat that say whether a file changed: size, mtime, ctime (ns) and inode."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@dataclass(frozen=True)
class _NewScan:
    """A settled file that needs a job, waiting for the rest of its round."""

    path: Path
    st: os.stat_result
    digest: str
    event: Event


class FileIntake:
    """Decides, for one watch, what each settled file needs."""

    def __init__(self, watch: WatchConfig, queue: JobQueue, max_file_mb: int) -> None:
        self.watch = watch
        self.queue = queue
        self.key = watch.key
        # Files above `[images] max_file_mb` are refused without reading them.
        self.limit_bytes = max_file_mb * 1024 * 1024
        self.states: dict[bytes, FileSeen] = {}
        self._by_sha: dict[str, set[bytes]] = {}
        self._pending: list[_NewScan] = []

    def load(self) -> None:
        """Read the watch's recorded file states (one query, at start)."""
        self.states = self.queue.file_states(SOURCE, self.key)
        self._by_sha = {}
        for seen in self.states.values():
            if seen.sha256:
                self._by_sha.setdefault(seen.sha256, set()).add(seen.path)

    def unchanged(self, path: Path, st: os.stat_result) -> bool:
        """Whether `path` is exactly as recorded (a rescan skips it without reading a byte)."""
        seen = self.states.get(os.fsencode(path))
        return seen is not None and seen.same_stat(*stat_key(st))

    def take(self, path: Path, st: os.stat_result) -> None:
        """Handle one settled regular file; storage faults propagate (the caller retries later)."""
        self.take_many([(path, st)])

    def take_many(self, files: Sequence[tuple[Path, os.stat_result]]) -> None:
        """Handle settled files; the new scans among them become jobs in one write transaction.

        A backlog settles hundreds of files at once, and one transaction (and one wait for the store's
        writer) per scan was the spine's ceiling. Storage faults propagate: the caller retries the same
        files, and those already handled are then unchanged and skipped.
        """
        self._pending = []
        for path, st in files:
            self._guarded(path, st, self._take)
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self._submit_all(pending)
        except StorageUnavailable:
            raise
        except Exception:
            log.exception("%s: %d new scans could not be queued together; one by one", self.key, len(pending))
            for item in pending:
                self._guarded(item.path, item.st, partial(self._submit_one, item))

    def _guarded(
        self, path: Path, st: os.stat_result, action: Callable[[Path, os.stat_result], None]
    ) -> None:
        """`action(path, st)`; an unexpected error gives the file a failure record instead of a loop."""
        try:
            action(path, st)
        except StorageUnavailable:
            raise
        except Exception as exc:
            log.exception("%s: %s could not be handled", self.key, display_path(path))
            try:
                self._refuse(path, st, msg("unexpected", reason=f"{type(exc).__name__}: {exc}"), None)
            except StorageUnavailable:
                raise
            except Exception:
                # Not even a failure record could be written: skip the file until it changes.
                log.exception("%s: no failure record for %s either", self.key, display_path(path))
                raw = os.fsencode(path)
                self.states[raw] = FileSeen(raw, *stat_key(st), None, None)

    def _take(self, path: Path, st: os.stat_result) -> None:
        raw = os.fsencode(path)
        seen = self.states.get(raw)
        if seen is not None and seen.same_stat(*stat_key(st)):
            return
        if st.st_size > self.limit_bytes:
            size_mb = st.st_size / 1048576
            limit_mb = self.limit_bytes // 1048576
            self._refuse(path, st, msg("image_too_large", size_mb=size_mb, limit_mb=limit_mb), None)
            return
        try:
            digest = sha256_file(path, max_bytes=self.limit_bytes)
        except PermanentError as exc:
            self._refuse(path, st, exc.message, None)
            return
        except OSError as exc:
            self._refuse(path, st, msg("image_unreadable", reason=exc.strerror or exc), None)
            return
        if seen is not None and seen.sha256 == digest and self._same_content(path, st, seen):
            return
        if seen is None and self._moved(path, st, digest):
            return
        self._submit(path, st, digest)

    # -- the cases --------------------------------------------------------------------------------

    def _same_content(self, path: Path, st: os.stat_result, seen: FileSeen) -> bool:
        """Touched or re-copied: record the new state; True unless the recorded answer is stale."""
        job = self.queue.job(seen.job_id) if seen.job_id is not None else None
        if job is None or self._stale(job):
            return False
        self._save(path, st, seen.sha256, job.id)
        if job.status in (JobStatus.DONE, JobStatus.FAILED):
            write_sidecars_for_job(job, self.watch, only_if_missing=True)
        return True

    def _stale(self, job: Job) -> bool:
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return False
        if job.prompt_hash != prompt_hash(self.watch.prompt):
            return True
        identity = self.queue.model_identity
        answered_by = (job.model or "", job.model_version or "")
        return job.status == JobStatus.DONE and identity is not None and answered_by != identity

    def _moved(self, path: Path, st: os.stat_result, digest: str) -> bool:
        """A recorded file with this content whose path is gone: it was renamed; move its record."""
        for old in sorted(self._by_sha.get(digest, ())):
            if os.path.lexists(os.fsdecode(old)):
                continue  # still there: this is a copy, answered on its own (the answer is reused)
            seen = self.states[old]
            job = self.queue.job(seen.job_id) if seen.job_id is not None else None
            if job is None or self._stale(job):
                continue
            new = os.fsencode(path)
            self.queue.files.move(SOURCE, self.key, old, new, display_path(path), str(path))
            self._forget(old)
            self._save(path, st, digest, job.id)
            moved = self.queue.job(job.id)
            if moved is not None and moved.status in (JobStatus.DONE, JobStatus.FAILED):
                move_sidecars(Path(os.fsdecode(old)), path, moved, self.watch)
            log.info("%s: %s was renamed to %s", self.key, display_path(os.fsdecode(old)), display_path(path))
            return True
        return False

    def _submit(self, path: Path, st: os.stat_result, digest: str) -> None:
        """A new scan (or new content): queued with the others of this round (`take_many`)."""
        notes: list[dict[str, object]] = []
        stem, shortened = sidecar_stem(path)
        if shortened:
            note = msg("sidecar_name_shortened", name=display_path(stem))
            notes.append({"code": note.code, "params": note.json_params()})
            log.warning("%s: %s", self.key, note)
        event = Event(
            source=SOURCE,
            source_ref=self.key,
            question=self.watch.prompt,
            images=(str(path),),
            priority=Priority.BACKLOG,
            sha256=digest,
            file_size=st.st_size,
            file_mtime=st.st_mtime,
            notes=tuple(notes),
            options=GenerationOptions(thinking=self.watch.thinking),
        )
        self._pending.append(_NewScan(path, st, digest, event))

    def _submit_one(self, scan: _NewScan, _path: Path, _st: os.stat_result) -> None:
        self._submit_all([scan])

    def _submit_all(self, scans: list[_NewScan]) -> None:
        """The scans' jobs and their `files` rows, all in one transaction (never a job without its row)."""
        saved: list[FileSeen] = []

        def record_files(connection: Any, ids: list[int]) -> None:
            rows: list[FileRow] = [
                (os.fsencode(s.path), display_path(s.path), stat_key(s.st), s.digest, job_id)
                for s, job_id in zip(scans, ids, strict=True)
            ]
            saved.extend(self.queue.files.save_many_in(connection, SOURCE, self.key, rows))

        self.queue.submit_backlog([s.event for s in scans], dedup=True, also=record_files)
        for scan, seen in zip(scans, saved, strict=True):
            self._remember(seen.path, seen, scan.digest)

    def _refuse(self, path: Path, st: os.stat_result, message: Message, digest: str | None) -> None:
        """A failed job for a file refused before the model (history row + failure sidecar), state kept."""
        log.warning("%s: %s refused: %s", self.key, display_path(path), message.en)
        event = Event(
            source=SOURCE,
            source_ref=self.key,
            question=self.watch.prompt,
            images=(str(path),),
            priority=Priority.BACKLOG,
            sha256=digest,
            file_size=st.st_size,
            file_mtime=st.st_mtime,
        )
        job_id = self.queue.record_refused(event, message).id
        self._save(path, st, digest, job_id)

    # -- bookkeeping ------------------------------------------------------------------------------

    def _save(self, path: Path, st: os.stat_result, digest: str | None, job_id: int | None) -> None:
        raw = os.fsencode(path)
        seen = self.queue.files.save(SOURCE, self.key, raw, display_path(path), stat_key(st), digest, job_id)
        self._remember(raw, seen, digest)

    def _remember(self, raw: bytes, seen: FileSeen, digest: str | None) -> None:
        previous = self.states.get(raw)
        if previous is not None and previous.sha256 and previous.sha256 != digest:
            self._by_sha.get(previous.sha256, set()).discard(raw)
        self.states[raw] = seen
        if digest:
            self._by_sha.setdefault(digest, set()).add(raw)

    def _forget(self, raw: bytes) -> None:
        seen = self.states.pop(raw, None)
        if seen is not None and seen.sha256:
            self._by_sha.get(seen.sha256, set()).discard(raw)
