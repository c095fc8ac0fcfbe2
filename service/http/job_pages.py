"""What one job's page (`/jobs/{id}`) needs beyond the JobSummary: its page images and where its files are.

- `page_jpeg`: page n of the job (1-based over every page of every image, the order the reader read them in)
  as a JPEG, decoded through `service.images.decode_image` with the configured `[images]` limits: the same
  pixels the OCR boxes in `ocr_lines` are measured in, so the page draws them over the image unchanged.
  Shown as stored, not turned upright: the boxes belong to the image as stored (`rotation` says how far it
  would turn). Nothing is cached: a person opens one job at a time, and the thumbnails (`service.thumbnails`)
  cover every list.
- `detail_fields`: the extra JSON of `GET /api/jobs/{id}`: conversation, OCR lines, page URLs, review
  details and, for folder jobs, the sidecar paths (`NAME.EXT.json`, `.xmp`, `.alto.xml` when the watch
  writes ALTO) with whether each exists.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from db.models import Job
from service.config import Config, ImagesConfig
from service.errors import PermanentError
from service.files import display_path
from service.images import decode_image
from service.logs import job_context
from service.sidecars.output import alto_path_for, real_path, sidecar_paths_for

log = logging.getLogger(f"tuwen.{__name__}")

JPEG_QUALITY = 85


def page_count(job: Job) -> int:
    """How many pages the job has: as recorded when it was answered, else one per image."""
    return max(job.pages or 0, len(job.ocr_lines or ())) or len(job.images or ())


def page_jpeg(job: Job, number: int, data_dir: Path, limits: ImagesConfig) -> bytes | None:
    """Page `number` (1-based) of the job as a JPEG; None when there is no such page or it cannot be read."""
    if not 1 <= number <= page_count(job):
        return None
    remaining = number
    with job_context(job.uid):
        for stored in job.images:
            source = Path(stored) if Path(stored).is_absolute() else data_dir / stored
            # Only as many pages as needed: the first pages decode the same whatever max_pages is.
            needed = limits.model_copy(update={"max_pages": remaining})
            try:
                decoded = decode_image(source, needed, job.uid[:8])
            except PermanentError as exc:
                log.info("no page %d: %s", number, exc)
                return None
            if remaining <= len(decoded.pages):
                buffer = io.BytesIO()
                decoded.pages[remaining - 1].save(buffer, "JPEG", quality=JPEG_QUALITY)
                return buffer.getvalue()
            remaining -= len(decoded.pages)
    return None


def sidecar_files(job: Job, config: Config) -> list[dict[str, Any]]:
    """A folder job's sidecars (kind, path as shown, whether it exists); [] for other jobs."""
    watch = next((w for w in config.watch if job.source == "watch" and w.key == job.source_ref), None)
    file = real_path(job)
    if watch is None or file is None:
        return []
    try:
        json_path, xmp_path = sidecar_paths_for(file, watch)
    except ValueError:  # the scan lies outside its watch (moved since, or the watch's path changed)
        return []
    paths = [("json", json_path), ("xmp", xmp_path)]
    if watch.alto and job.ocr_lines:
        paths.append(("alto", alto_path_for(json_path)))
    return [{"kind": kind, "path": display_path(path), "exists": path.is_file()} for kind, path in paths]


def detail_fields(job: Job, config: Config) -> dict[str, Any]:
    """What `GET /api/jobs/{id}` adds to the JobSummary."""
    return {
        "history": list(job.history or []),
        "ocr_lines": list(job.ocr_lines or []),
        "pages": [
            {"number": n, "url": f"/api/jobs/{job.id}/pages/{n}"} for n in range(1, page_count(job) + 1)
        ],
        "sidecars": sidecar_files(job, config),
        "reviewed_at": job.reviewed_at.isoformat() if job.reviewed_at else None,
        "reviewed_by": job.reviewed_by,
    }
