"""The image pipeline: from a file on disk to size-capped RGB pages the model can take.

Everything a hostile or broken file can do is turned into a `PermanentError` with a catalogue message here,
so the worker never sees a PIL exception. Large JPEGs are decoded in draft mode (the decoder scales by 1/2,
1/4 or 1/8 while decoding), which is several times faster than decoding full size and then resizing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.config import ImagesConfig
from service.errors import PermanentError
from service.messages import msg

log = logging.getLogger("tuwen.vision")

# Formats we promise to read. MPO is what many phones write for JPEG photos.
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "TIFF", "WEBP", "BMP", "GIF"}
# Formats where only the first frame is meant (animations), as opposed to TIFF pages.
FIRST_FRAME_ONLY = {"GIF", "WEBP", "PNG", "MPO"}

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
    try:
        with warnings.catch_warnings():
            # PIL only warns between max_pixels and 2× max_pixels; we want a hard limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _decode_open_image(image, limits, job_id)
    except PermanentError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentError(msg("image_bomb", pixels="?", limit=limits.max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise PermanentError(msg("image_not_image")) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        # Truncated JPEG/PNG data, broken TIFF directories, bad chunk CRCs, ...
        log.info("[job %s] decode failed for %s: %s", job_id, path, exc)
        raise PermanentError(msg("image_corrupt")) from exc


def _decode_open_image(image: Image.Image, limits: ImagesConfig, job_id: str) -> DecodedImage:
    fmt = (image.format or "").upper()
    if fmt not in SUPPORTED_FORMATS:
        raise PermanentError(msg("image_not_image"))
    width, height = image.size
    if width * height > limits.max_pixels:
        raise PermanentError(msg("image_bomb", pixels=width * height, limit=limits.max_pixels))
    frames = 1 if fmt in FIRST_FRAME_ONLY else min(getattr(image, "n_frames", 1), limits.max_pages)
    pages: list[Image.Image] = []
    orig_size: tuple[int, int] | None = None
    for index in range(frames):
        if index:
            image.seek(index)
            if image.size[0] * image.size[1] > limits.max_pixels:
                raise PermanentError(
                    msg("image_bomb", pixels=image.size[0] * image.size[1], limit=limits.max_pixels)
                )
        page, size = _decode_page(image, limits.max_edge)
        orig_size = orig_size or size
        pages.append(page)
    assert orig_size is not None
    log.debug(
        "[job %s] decoded %s %dx%d, %d page(s) -> %s",
        job_id, fmt, orig_size[0], orig_size[1], len(pages), pages[0].size,
    )
    return DecodedImage(pages=pages, width=orig_size[0], height=orig_size[1], format=fmt)


def _decode_page(image: Image.Image, max_edge: int) -> tuple[Image.Image, tuple[int, int]]:
    width, height = image.size
    if image.format == "JPEG" and max(width, height) > max_edge:
        scale = max_edge / max(width, height)
        # draft() picks the largest 1/2^n reduction that still covers the requested size.
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    image.load()
    oriented = ImageOps.exif_transpose(image) or image
    # Orientation 5–8 swap the axes; report the size the viewer sees, at full resolution.
    rotated = oriented.size[0] != image.size[0]
    orig_size = (height, width) if rotated else (width, height)
    rgb = _to_rgb(oriented)
    if max(rgb.size) > max_edge:
        rgb.thumbnail((max_edge, max_edge), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb, orig_size


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent scans (PNG exports) go on white paper, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale TIFFs (archival scanners): scale to 8 bits instead of clipping to white.
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")
