"""The image pipeline: from a file on disk to size-capped RGB pages the model can take.

Everything a hostile or broken file can do is turned into a `PermanentError` with a catalogue message here,
so the worker never sees a PIL exception. Large JPEGs (and MPO, the JPEG variant many phones write) are
decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, which is several times faster than
decoding full size and then resizing (a 6000×4000 photo on a 2-core box: ~1.0 s full decode + resize, ~0.1 s
here; a worst-case 15 MB noise JPEG still goes from ~1.1 s to ~0.4 s, the entropy decoding being the floor).
Pages are oriented in place and resized into a new image, so a big scan is never copied at full size.

Choices worth knowing:
- The format is sniffed from the content, never from the name: a PNG saved as `scan.jpg` decodes. Users rename
  files carelessly and the bytes are what matter. Only `SUPPORTED_FORMATS` are tried, so the many obscure
  PIL plugins (EPS, PSD, ICO, ...) are never exposed to untrusted files.
- `[images] max_pixels` is checked from the header before any pixel is decoded. PIL's own global
  `Image.MAX_IMAGE_PIXELS` stays in place as a backstop (its hard error becomes `image_bomb` too), but its
  warning is not turned into an error: doing that would refuse images our configured limit allows, and
  `warnings.catch_warnings` is process-global state that is not safe to flip from a worker thread.
- A file that cannot be opened (missing, permissions, a directory) is `image_unreadable`; a file that opens
  but does not decode is `image_corrupt`. Truncated data is always an error, never grey filler.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.config import ImagesConfig
from service.errors import PermanentError
from service.messages import msg

log = logging.getLogger("tuwen.vision")

# Our own `max_pixels` check refuses bombs with a clear message; PIL's warning below it is only noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Formats we promise to read. MPO is what many phones write for JPEG photos.
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "TIFF", "WEBP", "BMP", "GIF"}
# Formats where only the first frame is meant (animations, stereo pairs), as opposed to TIFF pages.
FIRST_FRAME_ONLY = {"GIF", "WEBP", "PNG", "MPO"}
# What Image.open may try, most common first. MPO is not a separate opener: PIL's JPEG opener returns it.
_OPEN_AS = ("JPEG", "PNG", "TIFF", "WEBP", "GIF", "BMP")
# Formats whose decoder can scale down while decoding (`Image.draft`).
DRAFT_FORMATS = {"JPEG", "MPO"}
# 16-bit (and 32-bit integer) greyscale: archival scanners write these as TIFF, some tools as PNG.
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}

# Never let PIL silently fill a truncated file with grey: that would be a wrong answer, not an error.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class DecodedImage:
    """A decoded file: one or more pages, each RGB and capped to the configured long edge."""

    pages: list[Image.Image]
    width: int  # original size of the first page, after EXIF orientation
    height: int
    format: str


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The content hash used for de-duplication."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def decode_image(path: Path, limits: ImagesConfig, job_id: str = "-") -> DecodedImage:
    """Open, check and decode `path`; raise `PermanentError` with a clear message for any bad file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise PermanentError(msg("image_unreadable", reason=exc.strerror or exc)) from exc
    if size == 0:
        raise PermanentError(msg("image_empty"))
    if size > limits.max_file_mb * 1024 * 1024:
        raise PermanentError(msg("image_too_large", size_mb=size / 1048576, limit_mb=limits.max_file_mb))
    # PIL's own bomb check fails at 2 × MAX_IMAGE_PIXELS: keep it as a backstop just above our limit.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limits.max_pixels // 2 + 1)
    try:
        # Opened here rather than by PIL so that "cannot open" (gone, no permission, a directory) is told
        # apart from "opened but not decodable".
        handle = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError as exc:
        raise PermanentError(msg("image_unreadable", reason=exc.strerror or exc)) from exc
    try:
        with handle, Image.open(handle, formats=_OPEN_AS) as image:
            return _decode_open_image(image, limits, job_id)
    except PermanentError:
        raise
    except Image.DecompressionBombError as exc:
        raise PermanentError(msg("image_bomb", pixels=_pixels_from(exc), limit=limits.max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise PermanentError(msg("image_not_image")) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        # Truncated JPEG/PNG data, broken TIFF directories, bad chunk CRCs, ...
        log.info("[job %s] decode failed for %s: %s", job_id, path, exc)
        raise PermanentError(msg("image_corrupt")) from exc


def _pixels_from(exc: Image.DecompressionBombError) -> str:
    # PIL refuses in Image.open, before we hold the image; its message is the only place the size is told.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return found.group(1) if found else "?"


def _decode_open_image(image: Image.Image, limits: ImagesConfig, job_id: str) -> DecodedImage:
    fmt = (image.format or "").upper()
    if fmt not in SUPPORTED_FORMATS:
        raise PermanentError(msg("image_not_image"))
    _check_pixels(image, limits)
    available = 1 if fmt in FIRST_FRAME_ONLY else getattr(image, "n_frames", 1)
    frames = min(available, limits.max_pages)
    if frames < available:
        log.info("[job %s] %d pages; using the first %d ([images] max_pages)", job_id, available, frames)
    pages: list[Image.Image] = []
    orig_size: tuple[int, int] | None = None
    for index in range(frames):
        if index:
            image.seek(index)
            _check_pixels(image, limits)
        page, size = _decode_page(image, limits.max_edge, job_id)
        orig_size = orig_size or size
        pages.append(page)
    assert orig_size is not None
    log.debug(
        "[job %s] decoded %s %dx%d, %d page(s) -> %s",
        job_id,
        fmt,
        orig_size[0],
        orig_size[1],
        len(pages),
        pages[0].size,
    )
    return DecodedImage(pages=pages, width=orig_size[0], height=orig_size[1], format=fmt)


def _check_pixels(image: Image.Image, limits: ImagesConfig) -> None:
    pixels = image.size[0] * image.size[1]
    if pixels > limits.max_pixels:
        raise PermanentError(msg("image_bomb", pixels=pixels, limit=limits.max_pixels))


def _decode_page(image: Image.Image, max_edge: int, job_id: str) -> tuple[Image.Image, tuple[int, int]]:
    width, height = image.size
    if image.format in DRAFT_FORMATS and max(width, height) > max_edge:
        scale = max_edge / max(width, height)
        # draft() picks the largest 1/2^n reduction that still covers the requested size.
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    image.load()
    stored = image.size
    _orient_in_place(image, job_id)
    # Orientation 5–8 swap the axes; report the size the viewer sees, at full resolution (not draft size).
    # (PIL's TIFF reader applies the orientation itself while loading and reports the turned size from the
    # start, so for TIFF nothing is swapped here and `width, height` are already right.)
    swapped = image.size != stored and image.size == stored[::-1]
    orig_size = (height, width) if swapped else (width, height)
    page = _fit(_to_rgb(image), max_edge)
    # The page must outlive the file. Copy only when nothing above made a new image: a full-size copy of a
    # 600 dpi A4 scan is 100 MB for nothing.
    return (page.copy() if page is image else page), orig_size


def _orient_in_place(image: Image.Image, job_id: str) -> None:
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError) as exc:
        # Broken EXIF from some camera firmwares: the pixels are fine, so use them as stored.
        log.info("[job %s] ignoring unreadable EXIF orientation: %s", job_id, exc)


def _fit(image: Image.Image, max_edge: int) -> Image.Image:
    width, height = image.size
    if max(width, height) <= max_edge:
        return image
    scale = max_edge / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a fast box reduction first, then Lanczos over the last factor of 3 (as thumbnail() does).
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # Transparent scans (PNG exports, GIFs, palette PNGs with tRNS) go on white paper, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES:
        # 16-bit greyscale TIFFs (archival scanners): scale to 8 bits instead of clipping to white. Going
        # through "I" first because point() does not accept big-endian "I;16B" (TIFFs written as "MM").
        return image.convert("I").point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")
