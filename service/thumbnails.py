"""Small JPEG thumbnails of a job's first image, for the history, review and feed pages.

The image goes through `service.images.decode_image`, the same hardened path the model uses (format sniffed
from content, pixel limit before decoding, EXIF orientation), asked for one page with a 256-pixel long edge,
so big JPEG scans are draft-decoded at a fraction of their size. The result is cached under
`data_dir/thumbs/<job uid>.jpg` and rebuilt when the image is newer than the cache. When the image file is
gone (a scan moved away, uploads cleaned up) there is no thumbnail, even if one is cached: the pages should
show that the original is missing rather than a picture of something no longer there. A scan the reader
found turned (`jobs.rotation`, clockwise degrees) is shown upright; the cache name carries the rotation, so
a re-read that turns it differently gets a fresh thumbnail.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
from pathlib import Path

from db.models import Job
from service.config import ImagesConfig
from service.errors import PermanentError
from service.images import decode_image
from service.logs import job_context

log = logging.getLogger(f"tuwen.{__name__}")

THUMBNAIL_EDGE = 256
THUMBS_DIR = "thumbs"
_UID = re.compile(r"^[0-9a-f]{8,64}$")


def thumbnail_bytes(job: Job, data_dir: Path, limits: ImagesConfig | None = None) -> bytes | None:
    """A JPEG of the job's first image (first page), long edge at most 256 px; None when there is none.

    None when the job has no image, the file is gone or unreadable, or it does not decode. `limits` are
    the configured `[images]` limits (file size, pixel count); the defaults are used when not given.
    Relative image paths are taken relative to `data_dir`.
    """
    if not job.images or not _UID.match(job.uid or ""):
        return None
    source = Path(job.images[0])
    if not source.is_absolute():
        source = data_dir / source
    try:
        source_mtime = source.stat().st_mtime
    except OSError:
        return None
    rotation = (job.rotation or 0) % 360
    cached = data_dir / THUMBS_DIR / (f"{job.uid}-r{rotation}.jpg" if rotation else f"{job.uid}.jpg")
    with contextlib.suppress(OSError):
        if cached.stat().st_mtime >= source_mtime:
            return cached.read_bytes()
    with job_context(job.uid):
        data = _render(source, limits or ImagesConfig(), job.uid, rotation)
    if data is not None:
        _store(cached, data, job.uid)
    return data


def _render(source: Path, limits: ImagesConfig, uid: str, rotation: int = 0) -> bytes | None:
    small = limits.model_copy(update={"max_edge": THUMBNAIL_EDGE, "max_pages": 1})
    try:
        decoded = decode_image(source, small, uid[:8])
    except PermanentError as exc:
        log.info("no thumbnail for %s: %s", source, exc)
        return None
    page = decoded.pages[0]
    if rotation:
        page = page.rotate(-rotation, expand=True)  # PIL turns counter-clockwise; rotation is clockwise
    buffer = io.BytesIO()
    page.save(buffer, "JPEG", quality=80, optimize=True)
    return buffer.getvalue()


def _store(cached: Path, data: bytes, uid: str) -> None:
    """Write the cache atomically (two requests for one thumbnail may race); failures only cost speed."""
    tmp = cached.with_name(f"{cached.name}.{secrets.token_hex(4)}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    except OSError as exc:
        log.warning("cannot cache thumbnail %s: %s", cached, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
