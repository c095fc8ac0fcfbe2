"""Real PDF, HEIC and AVIF files for tests, written here so every byte of them is known.

PDFs with text come from fpdf2 (a real text layer, with a subset of the CJK font `bench/render.py` uses);
scan-like PDFs are rendered pages saved by PIL, which is what a scanner's "save as PDF" writes. HEIC files
come from pillow-heif, AVIF files from Pillow's own plugin.
"""

from __future__ import annotations

import io
from pathlib import Path

import pillow_heif
from fpdf import FPDF
from fpdf.enums import TextMode
from PIL import Image

from bench.render import find_cjk_font, render_text_image

ORIENTATION = 0x0112
SECRET = "Confidential: county archive file 17"
# A PDF with an empty page tree, as some tools write when every page was deleted. Offsets are exact.
_EMPTY_PDF_OBJECTS = (
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [] /Count 0 >>",
)

pillow_heif.register_heif_opener()


def _new_pdf(lines: list[str]) -> FPDF:
    """An A4 fpdf2 document with a font for `lines`; the CJK font only when needed (~1 s to embed)."""
    pdf = FPDF(format="A4")
    if all(ord(ch) < 256 for line in lines for ch in line):
        pdf.set_font("helvetica", size=20)
        return pdf
    font = find_cjk_font()
    collection = 2 if font.name.startswith("Noto") and font.suffix == ".ttc" else 0
    pdf.add_font("cjk", fname=str(font), collection_font_number=collection)
    pdf.set_font("cjk", size=20)
    return pdf


def text_pdf(path: Path, pages: list[list[str]], *, landscape_pages: tuple[int, ...] = ()) -> Path:
    """A born-digital PDF: each page's lines as real text (Chinese and Latin)."""
    pdf = _new_pdf([line for lines in pages for line in lines])
    for number, lines in enumerate(pages, start=1):
        pdf.add_page(orientation="L" if number in landscape_pages else "P")
        for line in lines:
            pdf.cell(0, 14, line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def scan_pdf(path: Path, pages: list[list[str]], *, dpi: int = 150) -> Path:
    """A scanner's PDF: every page a rendered image of its lines, no text layer."""
    images = [render_text_image(lines, size=(1240, 1754), font_size=64) for lines in pages]
    images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return path


def colour_pdf(
    path: Path, colours: list[tuple[int, int, int]], size_pt: tuple[int, int] = (612, 792)
) -> Path:
    """A PDF of solid-colour pages of `size_pt` points (PIL at 72 dpi: one pixel per point)."""
    images = [Image.new("RGB", size_pt, colour) for colour in colours]
    images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return path


def scan_with_text_pdf(path: Path, text: list[str], *, invisible_over_page: bool) -> Path:
    """A page-filling scan image plus real text: an OCR layer spread over the page, or one stamped line."""
    pdf = _new_pdf(text)
    pdf.add_page()
    scan = render_text_image(["扫描的页面", "scanned page"], size=(1240, 1754), font_size=64)
    pdf.image(scan, x=0, y=0, w=pdf.w, h=pdf.h)
    if invisible_over_page:
        pdf.text_mode = TextMode.INVISIBLE
        step = (pdf.h - 40) / max(1, len(text) - 1)
        for index, line in enumerate(text):
            pdf.text(x=15, y=20 + index * step, text=line)
    else:
        pdf.text(x=15, y=12, text=text[0])
    pdf.output(str(path))
    return path


def encrypted_pdf(path: Path, *, user_password: str | None) -> Path:
    """A PDF with an owner password, and with `user_password` also needed to open it (None: not needed)."""
    pdf = _new_pdf([SECRET])
    pdf.add_page()
    pdf.cell(0, 14, SECRET)
    pdf.set_encryption(owner_password="owner-secret", user_password=user_password or "")
    pdf.output(str(path))
    return path


def empty_pdf(path: Path) -> Path:
    """A well-formed PDF whose page tree has no pages."""
    body = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(_EMPTY_PDF_OBJECTS, start=1):
        offsets.append(len(body))
        body += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    body += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    body += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref)
    path.write_bytes(bytes(body))
    return path


def photo_bytes(image: Image.Image, fmt: str, orientation: int = 1, **options: object) -> bytes:
    """`image` as HEIF (pillow-heif) or AVIF (Pillow) bytes, with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif.tobytes(), quality=options.pop("quality", 95), **options)
    return buffer.getvalue()
