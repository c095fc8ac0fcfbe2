"""The file formats tuwen reads, listed once: names, extensions, MIME types and how to recognise the bytes.

Everything that has to agree on "what can I send?" reads this table instead of keeping its own list:
`service/images.py` (which PIL plugins may see an untrusted file, and which files go to pdfium), the upload
store (which data URL types are accepted and which extension stored bytes get), the catalogue message
`image_not_image`, the Telegram document check, the `accept=` attributes of the web and kiosk pages and the
README's formats line (the last two are static text; tests/test_formats.py checks they match this table).

The bytes decide, never the name or the declared type: `sniff` looks at the first `SNIFF_BYTES` of a file.
Names and declared types are only used where no bytes are available yet (a browser's file picker, a
Telegram document before it is downloaded) or as a last resort for an upload's file extension.

This module is plain data with no imports from the rest of tuwen, so the message catalogue can use it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

# Enough for every signature below, including an ISO-BMFF `ftyp` box with a long list of brands.
SNIFF_BYTES = 256

# HEIF brands (ISO/IEC 23008-12) for HEVC-coded images and sequences, plus the generic image brands
# `mif1`/`msf1` that a HEIF file may carry alone. AVIF files carry `mif1` too: AVIF is looked for first.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


@dataclass(frozen=True)
class FileFormat:
    """One supported format.

    `name` is what people read (messages, README). `decoders` are the values `PIL.Image.format` may take
    for it ("PDF" for pdfium); `opener` is the PIL plugin allowed to open it (None: not a PIL format).
    `extensions` (lower case, no dot) and `mime_types` start with the canonical one. `all_pages`: every
    page is a page to answer (TIFF, PDF); otherwise only the first frame is meant (an animation's first
    frame, an MPO stereo pair's left image, a HEIF file's primary image).
    """

    name: str
    decoders: tuple[str, ...]
    opener: str | None
    extensions: tuple[str, ...]
    mime_types: tuple[str, ...]
    magic: Callable[[bytes], bool]
    all_pages: bool = False

    @property
    def extension(self) -> str:
        """The extension stored uploads of this format get."""
        return self.extensions[0]

    @property
    def is_image_type(self) -> bool:
        """Whether browsers file it under `image/*` (PDF is `application/pdf`)."""
        return self.mime_types[0].startswith("image/")


def _starts(*signatures: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(signatures)


def _is_webp(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def ftyp_brands(head: bytes) -> set[bytes]:
    """The major and compatible brands of an ISO-BMFF file's leading `ftyp` box (empty when there is none)."""
    if len(head) < 16 or head[4:8] != b"ftyp":
        return set()
    (size,) = struct.unpack(">I", head[:4])
    end = min(size, len(head)) if size >= 16 else 16
    brands = {head[8:12]}
    brands.update(head[i : i + 4] for i in range(16, end - 3, 4))
    return brands


def _is_avif(head: bytes) -> bool:
    return bool(ftyp_brands(head) & _AVIF_BRANDS)


def _is_heif(head: bytes) -> bool:
    brands = ftyp_brands(head)
    return bool(brands & _HEIF_BRANDS) and not brands & _AVIF_BRANDS


# In the order people read them; the order matters nowhere else.
FORMATS: tuple[FileFormat, ...] = (
    FileFormat(
        name="JPEG",
        decoders=("JPEG", "MPO"),  # MPO: the JPEG variant many phones write; PIL's JPEG opener returns it
        opener="JPEG",
        extensions=("jpg", "jpeg", "jpe", "jfif", "mpo"),
        mime_types=("image/jpeg", "image/jpg", "image/pjpeg"),
        magic=_starts(b"\xff\xd8\xff"),
    ),
    FileFormat(
        name="PNG",
        decoders=("PNG",),
        opener="PNG",
        extensions=("png",),
        mime_types=("image/png", "image/apng"),
        magic=_starts(b"\x89PNG\r\n\x1a\n"),
    ),
    FileFormat(
        name="TIFF",
        decoders=("TIFF",),
        opener="TIFF",
        extensions=("tif", "tiff"),
        mime_types=("image/tiff",),
        magic=_starts(b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),  # classic and BigTIFF
        all_pages=True,
    ),
    FileFormat(
        name="WebP",
        decoders=("WEBP",),
        opener="WEBP",
        extensions=("webp",),
        mime_types=("image/webp",),
        magic=_is_webp,
    ),
    FileFormat(
        name="BMP",
        decoders=("BMP",),
        opener="BMP",
        extensions=("bmp",),
        mime_types=("image/bmp", "image/x-ms-bmp", "image/x-bmp"),
        magic=_starts(b"BM"),
    ),
    FileFormat(
        name="GIF",
        decoders=("GIF",),
        opener="GIF",
        extensions=("gif",),
        mime_types=("image/gif",),
        magic=_starts(b"GIF87a", b"GIF89a"),
    ),
    FileFormat(
        name="HEIC/HEIF",
        decoders=("HEIF",),  # pillow-heif's plugin
        opener="HEIF",
        extensions=("heic", "heif", "hif"),
        mime_types=("image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"),
        magic=_is_heif,
    ),
    FileFormat(
        name="AVIF",
        decoders=("AVIF",),  # Pillow's own plugin (Pillow ≥ 11.3 wheels bundle libavif)
        opener="AVIF",
        extensions=("avif",),
        mime_types=("image/avif", "image/avif-sequence"),
        magic=_is_avif,
    ),
    FileFormat(
        name="PDF",
        decoders=("PDF",),
        opener=None,  # rendered by pdfium (service/pdf.py); PIL only writes PDFs
        extensions=("pdf",),
        mime_types=("application/pdf", "application/x-pdf"),
        magic=_starts(b"%PDF-"),
        all_pages=True,
    ),
)

PDF = next(fmt for fmt in FORMATS if fmt.name == "PDF")
# A declared type that says nothing (browsers send it for files they cannot name, e.g. HEIC on Windows).
UNTYPED = "application/octet-stream"


def sniff(head: bytes) -> FileFormat | None:
    """The format whose signature `head` (a file's first `SNIFF_BYTES`) carries, or None."""
    return next((fmt for fmt in FORMATS if fmt.magic(head)), None)


def for_mime(mime: str) -> FileFormat | None:
    """The format a MIME type (parameters and case ignored) names, or None."""
    wanted = mime.split(";")[0].strip().lower()
    return next((fmt for fmt in FORMATS if wanted in fmt.mime_types), None)


def for_filename(name: str) -> FileFormat | None:
    """The format a file name's extension suggests, or None (only where no bytes are at hand yet)."""
    _stem, dot, ext = name.rpartition(".")
    return next((fmt for fmt in FORMATS if dot and ext.lower() in fmt.extensions), None)


def for_decoder(pil_format: str) -> FileFormat | None:
    """The format of a decoded file, from `PIL.Image.format` (or "PDF"), or None when it is not ours."""
    return next((fmt for fmt in FORMATS if pil_format.upper() in fmt.decoders), None)


def pil_openers() -> tuple[str, ...]:
    """The PIL plugins that may open an untrusted file; PIL's many other plugins are never tried."""
    return tuple(fmt.opener for fmt in FORMATS if fmt.opener)


def mime_types() -> tuple[str, ...]:
    """Every MIME type we accept, canonical ones first within each format."""
    return tuple(mime for fmt in FORMATS for mime in fmt.mime_types)


def names(lang: str = "en") -> str:
    """The supported formats as a phrase for messages: "JPEG, PNG … and PDF" / "JPEG、PNG…、PDF"."""
    listed = [fmt.name for fmt in FORMATS]
    if lang == "zh":
        return "、".join(listed)
    return ", ".join(listed[:-1]) + " and " + listed[-1]


def accept_attribute() -> str:
    """The value for the web page's `<input type=file accept=…>` (index.html holds it; a test compares).

    `image/*` first, so phones still offer the camera and photo library; then the non-image types (PDF)
    and every extension, because desktop systems that have no MIME mapping for `.heic` or `.avif` would
    otherwise grey those files out. The kiosk keeps a plain `image/*`: with `capture`, browsers open the
    camera only for image types, and what the camera gives is read whatever it is.
    """
    types = ["image/*"] + [fmt.mime_types[0] for fmt in FORMATS if not fmt.is_image_type]
    return ",".join(types + [f".{ext}" for fmt in FORMATS for ext in fmt.extensions])


def upload_acceptable(mime: str, file_name: str = "") -> bool:
    """Whether a file announced with `mime` and `file_name` is worth downloading (before its bytes exist).

    Any `image/*` type counts too: the decoder then tells the sender precisely what is wrong with it.
    """
    return (
        for_mime(mime) is not None
        or for_filename(file_name) is not None
        or mime.strip().lower().startswith("image/")
    )
