"""PDF files through pdfium: each page rendered at the size the model takes, plus the PDF's own text.

Archives receive PDFs from scanners, from digitisation suppliers (usually with an OCR text layer) and as
born-digital documents. A PDF is answered like a multi-page TIFF: every page up to `[images] max_pages`,
the rest named in `DecodedImage.dropped_pages`.

Choices worth knowing:
- Each page is rendered at the scale that puts its long edge at `[images] max_edge`, computed from the
  page's size in points. Rendering at 300 or 600 dpi and shrinking afterwards would cost 10-100× the memory
  and time for the same pixels. `[images] max_pixels` is checked against that size before rendering.
- Text layer: a page's own text (pdfium's text order, which is the reading order scanners, OCR tools and
  word processors write) is returned beside its pixels when it is real text, so the OCR step can use it
  instead of reading pixels. "Real" means at least `MIN_TEXT_CHARS` visible characters, nearly none of them
  unmappable (a font without a Unicode map yields U+FFFD or private-use code points, which is no text at
  all), and, on a page that is mostly a raster image (a scan), lines spread over at least
  `MIN_SCAN_TEXT_COVER` of the page. The last rule keeps a stamped header, a page number or a
  "scanned by" line over a scan from standing in for the whole page: such pages are OCRed from pixels.
- Truncated files are refused (`pdf_broken`), not half-read: a PDF must end with `%%EOF` (after trailing
  whitespace or NUL padding). pdfium would otherwise rebuild a cut file and silently answer fewer pages.
- A password needed to open the file is `pdf_encrypted`; owner-password-only PDFs (printing or copying
  "restricted") open without one and are read normally, as every viewer does.
- pdfium is not thread-safe and the API checks uploads while the worker decodes: every pdfium call runs
  under `_PDFIUM_LOCK`. Documents, pages, text pages and bitmaps are closed explicitly, children first.
- No form environment is set up, so no JavaScript or XFA ever runs; forms show their stored appearance.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from service.config import ImagesConfig
from service.errors import PermanentError
from service.messages import msg

log = logging.getLogger("tuwen.vision")

_PDFIUM_LOCK = threading.Lock()
MIN_TEXT_CHARS = 16
MAX_UNMAPPED_SHARE = 0.1
SCAN_IMAGE_COVER = 0.5  # raster images over at least this share of the page: a scan
MIN_SCAN_TEXT_COVER = 0.25
EOF_WINDOW = 16 * 1024  # %%EOF must be in the file's last bytes (the spec says 1 KiB; producers vary)
_PASSWORD_ERRORS = {pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY}
_NO_PAGES = re.compile(rb"/Type\s*/Pages\b.{0,200}?/Count\s+0\b|/Count\s+0\b.{0,200}?/Type\s*/Pages\b", re.S)
_A_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_ENCRYPT = re.compile(rb"/Encrypt(?![a-zA-Z])")
TRAILER_WINDOW = 1 << 20
_LINE_ENDS = re.compile(r"\r\n?")


@dataclass
class RenderedPdf:
    """The used pages of a PDF: RGB images with the long edge at max_edge, and each page's text or None."""

    pages: list[Image.Image]
    texts: list[str | None]
    total_pages: int
    first_page_points: tuple[int, int]  # the first page's size in points (1/72 inch), as a viewer shows it


def render_pdf(handle: IO[bytes], size: int, limits: ImagesConfig, job_id: str) -> RenderedPdf:
    """Render the first `[images] max_pages` pages of an open PDF file of `size` bytes.

    Raises `PermanentError` (`pdf_broken`, `pdf_encrypted`, `pdf_empty`, `pdf_page_broken`, `image_bomb`).
    """
    _check_complete(handle, size)
    try:
        with _PDFIUM_LOCK, _open_document(handle) as document:
            return _render_pages(document, limits, job_id)
    except pdfium.PdfiumError as exc:  # anything pdfium fails at that the steps below did not name
        log.info("pdfium failed: %s", exc)
        raise PermanentError(msg("pdf_broken")) from exc


def _render_pages(document: pdfium.PdfDocument, limits: ImagesConfig, job_id: str) -> RenderedPdf:
    total = len(document)
    if total == 0:
        raise PermanentError(msg("pdf_empty"))
    used = min(total, limits.max_pages)
    if used < total:
        log.info("PDF of %d pages; using the first %d ([images] max_pages)", total, used)
    pages: list[Image.Image] = []
    texts: list[str | None] = []
    first_size = (0, 0)
    for index in range(used):
        with _page(document, index) as page:
            width_pt, height_pt = page.get_size()  # after the page's /Rotate, as a viewer shows it
            if index == 0:
                first_size = (max(1, round(width_pt)), max(1, round(height_pt)))
            pages.append(_render(page, index, width_pt, height_pt, limits))
            texts.append(_text_layer(page, index, width_pt * height_pt, job_id))
    log.debug(
        "rendered PDF, %d of %d page(s), %d with a text layer -> %s",
        used,
        total,
        sum(text is not None for text in texts),
        pages[0].size,
    )
    return RenderedPdf(pages=pages, texts=texts, total_pages=total, first_page_points=first_size)


def _check_complete(handle: IO[bytes], size: int) -> None:
    handle.seek(max(0, size - EOF_WINDOW))
    tail = handle.read(EOF_WINDOW).rstrip(b"\x00\t\n\f\r ")
    handle.seek(0)
    if b"%%EOF" not in tail[-1024:]:
        raise PermanentError(msg("pdf_broken"))


@contextmanager
def _open_document(handle: IO[bytes]) -> Iterator[pdfium.PdfDocument]:
    try:
        # The open handle, not the path: the file was checked to be a regular file, and stays that file.
        document = pdfium.PdfDocument(handle, autoclose=False)
    except pdfium.PdfiumError as exc:
        # pdfium does not reset its last error on every failure (a PDF without pages leaves the previous
        # document's code in place), so a password error counts only for a file with an /Encrypt entry.
        if exc.err_code in _PASSWORD_ERRORS and _has_encrypt_entry(handle):
            raise PermanentError(msg("pdf_encrypted")) from exc
        raise PermanentError(msg(_why_unopenable(handle))) from exc
    try:
        yield document
    finally:
        document.close()


def _has_encrypt_entry(handle: IO[bytes]) -> bool:
    """Whether the trailer (or xref stream dictionary, never compressed) names an encryption dictionary.

    Looked for in the first and last `TRAILER_WINDOW` bytes: the trailer is at the end, and a linearised
    file repeats it near the start.
    """
    handle.seek(0)
    head = handle.read(TRAILER_WINDOW)
    handle.seek(0, 2)
    handle.seek(max(0, handle.tell() - TRAILER_WINDOW))
    tail = handle.read(TRAILER_WINDOW)
    handle.seek(0)
    return bool(_ENCRYPT.search(head) or _ENCRYPT.search(tail))


def _why_unopenable(handle: IO[bytes]) -> str:
    """`pdf_empty` or `pdf_broken`: pdfium refuses a PDF without pages with the same error as a broken one.

    Only the message depends on this guess, from a small file's uncompressed page tree.
    """
    handle.seek(0)
    data = handle.read(1 << 20)
    if _NO_PAGES.search(data) and not _A_PAGE.search(data):
        return "pdf_empty"
    return "pdf_broken"


@contextmanager
def _page(document: pdfium.PdfDocument, index: int) -> Iterator[pdfium.PdfPage]:
    try:
        page = document[index]
    except pdfium.PdfiumError as exc:
        raise PermanentError(msg("pdf_page_broken", page=index + 1)) from exc
    try:
        yield page
    finally:
        page.close()


def _render(
    page: pdfium.PdfPage, index: int, width_pt: float, height_pt: float, limits: ImagesConfig
) -> Image.Image:
    if not (width_pt > 0 and height_pt > 0 and math.isfinite(width_pt * height_pt)):
        raise PermanentError(msg("pdf_page_broken", page=index + 1))
    # pdfium sizes the bitmap as ceil(points × scale): shave a hair so the long edge is max_edge, not +1.
    scale = limits.max_edge / max(width_pt, height_pt) * (1 - 1e-9)
    width, height = math.ceil(width_pt * scale), math.ceil(height_pt * scale)
    if width * height > limits.max_pixels:
        raise PermanentError(msg("image_bomb", pixels=width * height, limit=limits.max_pixels))
    try:
        bitmap = page.render(scale=scale)
    except pdfium.PdfiumError as exc:
        raise PermanentError(msg("pdf_page_broken", page=index + 1)) from exc
    try:
        # The PIL image may share the bitmap's buffer: copy before the bitmap is freed.
        return bitmap.to_pil().convert("RGB").copy()
    finally:
        bitmap.close()


def _text_layer(page: pdfium.PdfPage, index: int, page_area: float, job_id: str) -> str | None:
    """The page's own text when it is real text (module docstring), else None: OCR reads the pixels.

    A text layer pdfium cannot read is no reason to fail a page that rendered: it is None too.
    """
    try:
        textpage = page.get_textpage()
    except pdfium.PdfiumError:
        log.info("page %d: no readable text layer", index + 1)
        return None
    try:
        text = clean_text(textpage.get_text_range())
        if not looks_like_text(text):
            return None
        is_scan = _scan_cover(page, page_area) >= SCAN_IMAGE_COVER
        if is_scan and _text_cover(textpage) < MIN_SCAN_TEXT_COVER * page_area:
            log.info("page %d: a scan with a few words on it; OCR reads it", index + 1)
            return None
        return text
    except pdfium.PdfiumError as exc:
        log.info("page %d: text layer unreadable (%s)", index + 1, exc)
        return None
    finally:
        textpage.close()


def clean_text(raw: str) -> str:
    """pdfium's page text with `\\n` line ends, no control characters and no trailing blanks."""
    lines = _LINE_ENDS.sub("\n", raw).split("\n")
    kept = ("".join(ch for ch in line if ch == "\t" or unicodedata.category(ch) != "Cc") for line in lines)
    return "\n".join(line.rstrip() for line in kept).strip("\n")


def looks_like_text(text: str) -> bool:
    """At least `MIN_TEXT_CHARS` visible characters, at most `MAX_UNMAPPED_SHARE` of them unmappable."""
    visible = [ch for ch in text if not ch.isspace()]
    unmapped = sum(ch == "\ufffd" or unicodedata.category(ch) in ("Co", "Cs", "Cn") for ch in visible)
    return len(visible) >= MIN_TEXT_CHARS and unmapped <= MAX_UNMAPPED_SHARE * len(visible)


def _scan_cover(page: pdfium.PdfPage, page_area: float) -> float:
    """The share of the page the largest raster image covers (1.0 for a scanned page)."""
    largest = 0.0
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3):
        left, bottom, right, top = image.get_bounds()
        largest = max(largest, max(0.0, right - left) * max(0.0, top - bottom))
    return min(1.0, largest / page_area)


def _text_cover(textpage: pdfium.PdfTextPage) -> float:
    """The area of the box around all text rectangles, in square points."""
    boxes = [textpage.get_rect(i) for i in range(textpage.count_rects())]
    if not boxes:
        return 0.0
    left, bottom = min(b[0] for b in boxes), min(b[1] for b in boxes)
    right, top = max(b[2] for b in boxes), max(b[3] for b in boxes)
    return max(0.0, right - left) * max(0.0, top - bottom)
