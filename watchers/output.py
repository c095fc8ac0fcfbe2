"""Turn a finished job into the files staff see next to their scans: JSON and XMP sidecars, the CSV catalogue.

Called on the model worker's thread after the database has recorded the job, so the database is always
ahead of the disk: a crash in between leaves a done job without sidecars, which the watcher's start-up
repair writes again (never a sidecar for an answer the database does not have).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from db.models import Job, JobStatus, ReviewStatus
from service.config import WatchConfig
from watchers.catalogue import CATALOGUE_NAME, CatalogueRow, append_catalogue_row
from watchers.sidecars import SidecarRecord, sidecar_paths, write_json_sidecar, write_xmp_sidecar

log = logging.getLogger("tuwen.watch.output")


def record_for_job(job: Job, tags: tuple[str, ...] = ()) -> SidecarRecord:
    """The sidecar view of a job row, with the staff correction (if any) beside the model's answer."""
    assert job.file_path is not None
    return SidecarRecord(
        status="done" if job.status == JobStatus.DONE else "failed",
        file_name=Path(job.file_path).name,
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
        # JSON only (XMP has tuwen:Corrected): whether a person checked the answer, and when.
        extra={
            "review_status": job.review_status or ReviewStatus.UNREVIEWED,
            "reviewed_at": job.reviewed_at.isoformat() if job.reviewed_at else None,
        },
    )


def write_sidecars_for_job(
    job: Job, watch: WatchConfig, *, catalogue: bool, only_if_missing: bool = False
) -> bool:
    """Write `NAME.EXT.json` (always) and `NAME.EXT.xmp` (done jobs) for a finished folder job.

    Returns True when something was written. Errors are logged, never raised: a read-only share or a full
    disk must not stop the worker, and the answer is safe in the database either way.
    """
    assert job.file_path is not None
    file = Path(job.file_path)
    json_path, xmp_path = sidecar_paths(file, watch.path, watch.output_dir)
    if only_if_missing and json_path.exists():
        return False
    record = record_for_job(job, tuple(watch.tags))
    try:
        write_json_sidecar(json_path, record)
        if record.status == "done":
            write_xmp_sidecar(xmp_path, record)
        if catalogue and watch.catalogue:
            root = watch.output_dir or watch.path
            append_catalogue_row(
                root / CATALOGUE_NAME,
                CatalogueRow(
                    file=str(file.relative_to(watch.path)) if file.is_relative_to(watch.path) else str(file),
                    time=record.created_at,
                    status=record.status,
                    question=record.question,
                    answer=record.answer or "",
                    ocr_text=record.ocr_text or "",
                    error=record.error or "",
                    correction=record.correction or "",
                ),
            )
    except (OSError, ValueError) as exc:
        log.error("[job %s] cannot write sidecars for %s: %s", job.uid[:8], file, exc)
        return False
    return True
