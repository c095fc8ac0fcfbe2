"""The image pipeline: from a file on disk to size-capped RGB pages the model can take.

Everything a hostile or broken file can do is turned into a `PermanentError` with a catalogue message here,
so the worker never sees a PIL or pdfium exception. Large JPEGs (and MPO, the JPEG variant many phones write)
are decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, which is several times faster
than decoding full size and then resizing (a 6000×4000 photo on a 2-core box: ~1.0 s full decode + resize,
~0.1 s here; a worst-case 15 MB noise JPEG still goes from ~1.1 s to ~0.4 s, the entropy decoding being the
floor). Pages are oriented in place and resized into a new image, so a big scan is never copied at full size.
PDFs are rendered by pdfium at the size needed (`service/pdf.py`); HEIC/HEIF goes through pillow-heif's PIL
plugin, AVIF through Pillow's own.

Choices worth knowing:
- The format is sniffed from the content, never from the name: a PNG saved as `scan.jpg` decodes. Users rename
  files carelessly and the bytes are what matter. Only the PIL plugins of `service/formats.py` are tried, so
  the many obscure ones (EPS, PSD, ICO, ...) are never exposed to untrusted files.
- Only regular files are read, and that is checked before the file is opened: opening a FIFO blocks until a
  writer comes, and a device such as /dev/zero never ends. The check is repeated on the open descriptor
  (opened non-blocking), so a file swapped for a FIFO in between cannot hang the worker either.
- `[images] max_pixels` is checked from the header before any pixel is decoded. PIL's own global
  `Image.MAX_IMAGE_PIXELS` stays in place as a backstop (its hard error becomes `image_bomb` too), but its
  warning is not turned into an error: doing that would refuse images our configured limit allows, and
  `warnings.catch_warnings` is process-global state that is not safe to flip from a worker thread.
- A file that cannot be opened (missing, permissions, not a regular file) is `image_unreadable`; a file that
  opens but does not decode is `image_corrupt` (also when its signature names a format we read but PIL
  cannot make sense of the rest, e.g. a cut-off HEIC). Truncated data is always an error, never grey filler.
- Pages beyond `[images] max_pages` (multi-page TIFF, PDF) are not decoded; their 1-based numbers are in
  `DecodedImage.dropped_pages` for the record, not only in the log.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pillow_heif
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service import formats
from service.config import ImagesConfig
from service.errors import PermanentError
from service.messages import Message, msg
from service.pdf import render_pdf

log = logging.getLogger("tuwen.vision")

# Our own `max_pixels` check refuses bombs with a clear message; PIL's warning below it is only noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# HEIC/HEIF through pillow-heif. Thumbnails, depth maps and auxiliary images are never used: not parsed.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
Image.init()
# What Image.open may try. An opener missing from this Pillow build (AVIF needs Pillow >= 11.3 with libavif)
# is left out rather than passed to Image.open, which raises KeyError for an unknown name.
_OPEN_AS = tuple(name for name in formats.pil_openers() if name in Image.OPEN)
if len(_OPEN_AS) < len(formats.pil_openers()):
    log.warning("this Pillow cannot open: %s", ", ".join(set(formats.pil_openers()) - set(_OPEN_AS)))
# Formats whose decoder can scale down while decoding (`Image.draft`).
DRAFT_FORMATS = {"JPEG", "MPO"}
# 16-bit (and 32-bit integer) greyscale: archival scanners write these as TIFF, some tools as PNG.
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Opening never blocks (a FIFO swapped in after the check) and never takes a controlling terminal.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)

# Never let PIL silently fill a truncated file with grey: that would be a wrong answer, not an error.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class DecodedImage:
    """A decoded file: one or more pages, each RGB and capped to the configured long edge.

    - `width`, `height`: the first page's original size after EXIF orientation, in pixels; for a PDF its
      size in points (1/72 inch), as a viewer shows it.
    - `format`: PIL's name for what the bytes are ("JPEG", "MPO", "HEIF", "AVIF", ...) or "PDF";
      `service.formats.for_decoder(format).name` is the name to show people.
    - `source_pages`: how many pages the file has (1 for single images, animations and MPO pairs).
    - `dropped_pages`: 1-based numbers of the pages not used because of `[images] max_pages`.
    - `text_layer`: one entry per page in `pages`: a PDF page's own text when it has a real text layer
      (see `service/pdf.py`), else None. Always as long as `pages`.
    """

    pages: list[Image.Image]
    width: int
    height: int
    format: str
    source_pages: int = 1
    dropped_pages: list[int] = field(default_factory=list)
    text_layer: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.text_layer:
            self.text_layer = [None] * len(self.pages)


def page_ranges(numbers: list[int]) -> str:
    """Sorted page numbers as short ranges: [3, 4, 5, 9] → "3-5, 9" (for records and messages)."""
    ranges: list[list[int]] = []
    for number in sorted(set(numbers)):
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


def dropped_pages_note(decoded: DecodedImage) -> Message | None:
    """The `pages_dropped` catalogue message for a file with pages left out by `max_pages`, else None."""
    if not decoded.dropped_pages:
        return None
    return msg(
        "pages_dropped",
        total=decoded.source_pages,
        used=len(decoded.pages),
        pages=page_ranges(decoded.dropped_pages),
    )


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (symlinks followed).

    `PermanentError(image_unreadable)` for anything else, decided before opening; `OSError` when the file
    is missing or cannot be opened (callers such as the watcher retry those later).
    """
    _refuse_irregular(path, os.stat(path).st_mode)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _refuse_irregular(path, os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_irregular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    raise PermanentError(msg("image_unreadable", reason=f"{path.name}: not a regular file but a {kind}"))


def sha256_file(path: Path, chunk_size: int = 1 << 20, *, max_bytes: int | None = None) -> str:
    """The content hash used for de-duplication.

    Reads regular files only (`PermanentError(image_unreadable)` otherwise, see `open_regular`) and, with
    `max_bytes`, at most `max_bytes + 1` bytes: a larger file is `PermanentError(image_too_large)`, also
    when it grows while being read. Missing or unopenable files raise `OSError` as before.
    """
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise _too_large(size, max_bytes)
        read = 0
        while True:
            wanted = chunk_size if max_bytes is None else min(chunk_size, max_bytes + 1 - read)
            chunk = handle.read(wanted)
            if not chunk:
                break
            read += len(chunk)
            if max_bytes is not None and read > max_bytes:
                raise _too_large(read, max_bytes)
            digest.update(chunk)
    return digest.hexdigest()


def _too_large(size: int, max_bytes: int) -> PermanentError:
    limit_mb = f"{max_bytes / 1048576:g}"
    return PermanentError(msg("image_too_large", size_mb=size / 1048576, limit_mb=limit_mb))


def decode_image(path: Path, limits: ImagesConfig, job_id: str = "-") -> DecodedImage:
    """Open, check and decode `path`; raise `PermanentError` with a clear message for any bad file."""
    try:
        # Opened here rather than by PIL so that "cannot open" (gone, no permission, not a regular file) is
        # told apart from "opened but not decodable".
        handle = open_regular(path)
    except OSError as exc:
        raise PermanentError(msg("image_unreadable", reason=exc.strerror or exc)) from exc
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise PermanentError(msg("image_empty"))
        if size > limits.max_file_mb * 1024 * 1024:
            raise PermanentError(msg("image_too_large", size_mb=size / 1048576, limit_mb=limits.max_file_mb))
        try:
            head = handle.read(formats.SNIFF_BYTES)
            handle.seek(0)
        except OSError as exc:  # an I/O error on a failing disk or share
            raise PermanentError(msg("image_unreadable", reason=exc.strerror or exc)) from exc
        if formats.PDF.magic(head):
            return _decode_pdf(handle, size, limits, job_id)
        return _decode_with_pil(handle, head, limits, job_id, path)


def _decode_pdf(handle: BinaryIO, size: int, limits: ImagesConfig, job_id: str) -> DecodedImage:
    try:
        rendered = render_pdf(handle, size, limits, job_id)
    except OSError as exc:  # reading the file itself failed (an I/O error on a failing disk or share)
        raise PermanentError(msg("image_unreadable", reason=exc.strerror or exc)) from exc
    width, height = rendered.first_page_points
    return DecodedImage(
        pages=rendered.pages,
        width=width,
        height=height,
        format="PDF",
        source_pages=rendered.total_pages,
        dropped_pages=list(range(len(rendered.pages) + 1, rendered.total_pages + 1)),
        text_layer=rendered.texts,
    )


def _decode_with_pil(
    handle: BinaryIO, head: bytes, limits: ImagesConfig, job_id: str, path: Path
) -> DecodedImage:
    # PIL's own bomb check fails at 2 × MAX_IMAGE_PIXELS: keep it as a backstop just above our limit.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limits.max_pixels // 2 + 1)
    try:
        with Image.open(handle, formats=_OPEN_AS) as image:
            return _decode_open_image(image, limits, job_id)
    except PermanentError:
        raise
    except Image.DecompressionBombError as exc:
        raise PermanentError(msg("image_bomb", pixels=_pixels_from(exc), limit=limits.max_pixels)) from exc
    except UnidentifiedImageError as exc:
        # Our signature but no PIL plugin would take it: a damaged file of a format we read.
        code = "image_corrupt" if formats.sniff(head) is not None else "image_not_image"
        raise PermanentError(msg(code)) from exc
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        MemoryError,
        RuntimeError,
    ) as exc:
        # Truncated JPEG/PNG/HEIC data, broken TIFF directories, bad chunk CRCs, ... (RuntimeError: what the
        # AVIF plugin raises for a damaged file, already while opening it)
        log.info("decode failed for %s: %s", path, exc)
        raise PermanentError(msg("image_corrupt")) from exc


def _pixels_from(exc: Image.DecompressionBombError) -> str:
    # PIL refuses in Image.open, before we hold the image; its message is the only place the size is told.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return found.group(1) if found else "?"


def _decode_open_image(image: Image.Image, limits: ImagesConfig, job_id: str) -> DecodedImage:
    fmt = (image.format or "").upper()
    known = formats.for_decoder(fmt)
    if known is None:
        raise PermanentError(msg("image_not_image"))
    _check_pixels(image, limits)
    available = getattr(image, "n_frames", 1) if known.all_pages else 1
    frames = min(available, limits.max_pages)
    if frames < available:
        log.info("%d pages; using the first %d ([images] max_pages)", available, frames)
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
        "decoded %s %dx%d, %d page(s) -> %s",
        fmt,
        orig_size[0],
        orig_size[1],
        len(pages),
        pages[0].size,
    )
    return DecodedImage(
        pages=pages,
        width=orig_size[0],
        height=orig_size[1],
        format=fmt,
        source_pages=available,
        dropped_pages=list(range(frames + 1, available + 1)),
    )


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
        log.info("ignoring unreadable EXIF orientation: %s", exc)


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
