"""Turn a finished job into the files staff see next to their scans: JSON and XMP sidecars, the CSV catalogue.

Called on the model worker's thread after the database has recorded the job, so the database is always
ahead of the disk: a crash in between leaves a done job without sidecars (or without its catalogue row),
which the watcher's start-up repair writes again, never a sidecar for an answer the database does not have.

Names: sidecars are named from the scan's real name (its bytes, GBK or not). A name too long for
`NAME.EXT.json` (over 255 bytes) gets a shortened, unique sidecar name instead (`<first bytes>~<hash>`),
and the job's record says which.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from service import __version__
from service.config import WatchConfig
from service.files import NAME_MAX, display_path
from service.jobs import Job, JobStatus, ReviewStatus
from service.messages import render
from service.sidecars.alto import alto_xml
from service.sidecars.catalogue import CATALOGUE_NAME, CatalogueRow, append_catalogue_row, read_catalogue
from service.sidecars.sidecar import (
    TMP_SUFFIX,
    SidecarRecord,
    atomic_write_bytes,
    write_json_sidecar,
    write_xmp_sidecar,
)

log = logging.getLogger(f"tuwen.{__name__}")

# The longest suffix a sidecar gets (`.alto.xml` is the longest planned; `.json`, `.xmp` are shorter).
ALTO_SUFFIX = ".alto.xml"
_LONGEST_SUFFIX = ALTO_SUFFIX
_SHORT_STEM_BYTES = 180


def real_path(job: Job) -> Path | None:
    """The scan's path as the filesystem names it (`file_path` is only its display form)."""
    if job.images:
        return Path(job.images[0])
    return Path(job.file_path) if job.file_path else None


def sidecar_stem(file: Path) -> tuple[str, bool]:
    """The name sidecars are made from (`NAME.EXT`), and whether it had to be shortened to fit."""
    name = file.name
    raw = os.fsencode(name)
    if len(raw) + len(_LONGEST_SUFFIX) <= NAME_MAX:
        return name, False
    digest = hashlib.sha256(raw).hexdigest()[:12]
    head = raw[:_SHORT_STEM_BYTES]
    return os.fsdecode(head + b"~" + digest.encode()), True


def sidecar_paths_for(file: Path, watch: WatchConfig) -> tuple[Path, Path]:
    """`(json, xmp)` paths for `file`: beside it, or mirrored under `output_dir`."""
    stem, _ = sidecar_stem(file)
    folder = (
        file.parent if watch.output_dir is None else watch.output_dir / file.parent.relative_to(watch.path)
    )
    return folder / f"{stem}.json", folder / f"{stem}.xmp"


def record_for_job(job: Job, tags: tuple[str, ...] = ()) -> SidecarRecord:
    """The sidecar view of a job row, with the staff correction (if any) beside the model's answer."""
    file = real_path(job)
    assert file is not None
    extra: dict[str, object] = {
        "review_status": job.review_status or ReviewStatus.UNREVIEWED,
        "reviewed_at": job.reviewed_at.isoformat() if job.reviewed_at else None,
        "reviewed_by": job.reviewed_by,
    }
    if job.notes:
        # The code and parameters for programs, the sentence for people reading the file.
        extra["notes"] = [
            {**note, "message": str(render(str(note.get("code")), note.get("params")))} for note in job.notes
        ]
    if job.ocr_lines:
        # Every line's box (pixels of the scan as stored) and confidence, page by page; `rotation` is how far
        # the scan must turn clockwise to be upright. Enough to write ALTO or check a number later.
        extra["needs_review"] = bool(job.needs_review)
        extra["rotation"] = job.rotation or 0
        extra["ocr_lines"] = list(job.ocr_lines)
    return SidecarRecord(
        status="done" if job.status == JobStatus.DONE else "failed",
        file_name=display_path(file.name),
        question=job.question,
        answer=job.answer,
        ocr_text=job.ocr_text,
        sha256=job.sha256 or "",
        model=job.model or "",
        model_version=job.model_version or "",
        backend=job.backend or "",
        created_at=job.finished_at or job.created_at or datetime.now(UTC),
        width=job.width,
        height=job.height,
        pages=job.pages or 1,
        error=job.error if job.status != JobStatus.DONE else None,
        job_id=job.uid,
        prompt_hash=job.prompt_hash,
        tags=tags,
        correction=job.correction,
        answer_kind=job.answer_kind,
        extra=extra,
    )


def write_sidecars_for_job(job: Job, watch: WatchConfig, *, only_if_missing: bool = False) -> bool:
    """Write `NAME.EXT.json` (always), `NAME.EXT.xmp` (done jobs) and, with `alto = true`, `NAME.EXT.alto.xml`
    (done jobs with OCR lines) for a finished folder job; `only_if_missing` writes only what is not there.

    Returns True when something was written. Errors are logged, never raised: a read-only share or a full
    disk must not stop the worker, and the answer is safe in the database either way.
    """
    file = real_path(job)
    if file is None:
        return False
    try:
        json_path, xmp_path = sidecar_paths_for(file, watch)
    except ValueError:  # not under the watch (moved since): nowhere to write
        return False
    alto_path = alto_path_for(json_path) if watch.alto and job.ocr_lines else None
    if only_if_missing and json_path.exists() and (alto_path is None or alto_path.exists()):
        return False
    record = record_for_job(job, tuple(watch.tags))
    try:
        if not (only_if_missing and json_path.exists()):
            write_json_sidecar(json_path, record)
            if record.status == "done":
                write_xmp_sidecar(xmp_path, record)
        if alto_path is not None and record.status == "done":
            atomic_write_bytes(alto_path, alto_for_job(job, file))
    except (OSError, ValueError) as exc:
        log.error("cannot write sidecars for %s: %s", display_path(file), exc)
        return False
    return True


def alto_path_for(json_path: Path) -> Path:
    """`NAME.EXT.alto.xml` beside `NAME.EXT.json` (the same, possibly shortened, stem)."""
    return json_path.with_name(json_path.name.removesuffix(".json") + ALTO_SUFFIX)


def alto_for_job(job: Job, file: Path) -> bytes:
    """The ALTO XML of a job's stored OCR pages."""
    return alto_xml(job.ocr_lines or [], file_name=display_path(file.name), software_version=__version__)


def catalogue_row_for_job(job: Job, watch: WatchConfig) -> CatalogueRow:
    """The catalogue line of a finished folder job (file relative to the watched folder)."""
    file = real_path(job)
    assert file is not None
    shown = file.relative_to(watch.path) if file.is_relative_to(watch.path) else file
    return CatalogueRow.from_record(record_for_job(job), file=display_path(shown))


def append_to_catalogue(job: Job, watch: WatchConfig) -> bool:
    """Append the job's row to the watch's catalogue; False when it could not be written (logged)."""
    root = watch.output_dir or watch.path
    try:
        append_catalogue_row(root / CATALOGUE_NAME, catalogue_row_for_job(job, watch))
    except (OSError, ValueError) as exc:
        log.error("cannot append to the catalogue in %s: %s", display_path(root), exc)
        return False
    return True


def catalogue_key(job: Job, watch: WatchConfig) -> tuple[str, str]:
    """(file, time) of a job's catalogue row, as written: what tells whether the row is already there."""
    row = catalogue_row_for_job(job, watch)
    return row.cells()[0], row.cells()[1]


def catalogue_keys(watch: WatchConfig) -> set[tuple[str, str]]:
    """(file, time) of every row in the watch's catalogue (empty when there is none yet)."""
    path = (watch.output_dir or watch.path) / CATALOGUE_NAME
    try:
        return {(row.get("file", ""), row.get("time", "")) for row in read_catalogue(path)}
    except (OSError, UnicodeError, csv.Error):
        return set()


def move_sidecars(old: Path, new: Path, job: Job, watch: WatchConfig) -> None:
    """A renamed scan: its sidecars follow it.

    The old JSON is tuwen's alone and is removed once the new one is written. The old XMP may hold what
    staff or another tool wrote, so it is renamed (never deleted) and then merged into as usual.
    """
    try:
        old_json, old_xmp = sidecar_paths_for(old, watch)
        new_json, new_xmp = sidecar_paths_for(new, watch)
    except ValueError:
        return
    if old_xmp.exists() and not new_xmp.exists():
        try:
            new_xmp.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old_xmp, new_xmp)
        except OSError as exc:
            log.error("cannot move %s to %s: %s", display_path(old_xmp), display_path(new_xmp), exc)
    if write_sidecars_for_job(job, watch) and old_json != new_json:
        for stale in (old_json, alto_path_for(old_json)):  # tuwen's alone: the new ones replace them
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def remove_temporary_files(folder: Path) -> int:
    """Delete `*.tuwen-tmp` files a kill left behind in `folder` (recursively); returns how many."""
    removed = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if name.endswith(TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed
