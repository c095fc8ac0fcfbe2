"""service/formats.py is the one list of supported formats: every place that names formats agrees with it.

Real files are sniffed (written by PIL, pillow-heif and fpdf2); the static page attributes and the README
line are compared with the table, so a format added there shows up here as a failing test until they follow.
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import pytest
from PIL import Image

from service import formats
from service.images import _OPEN_AS
from service.messages import msg
from service.uploads import IMAGE_MIME_TYPES, extension_for
from tests import documents

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "service" / "http" / "static"
README_LINE = re.compile(r"^\*\*Formats / 支持的格式:\*\* (.+?) —", re.M)


def _pil_bytes(fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, fmt, **options)
    return buffer.getvalue()


def _pdf_bytes(tmp: Path) -> bytes:
    return documents.colour_pdf(tmp / "one.pdf", [(255, 255, 255)]).read_bytes()


@pytest.mark.parametrize(
    ("make", "name", "extension"),
    [
        pytest.param(lambda tmp: _pil_bytes("JPEG"), "JPEG", "jpg", id="jpeg"),
        pytest.param(
            lambda tmp: _pil_bytes("MPO", save_all=True, append_images=[Image.new("RGB", (16, 16))]),
            "JPEG",
            "jpg",
            id="mpo",
        ),
        pytest.param(lambda tmp: _pil_bytes("PNG"), "PNG", "png", id="png"),
        pytest.param(lambda tmp: _pil_bytes("TIFF"), "TIFF", "tif", id="tiff"),
        pytest.param(lambda tmp: _pil_bytes("TIFF", big_tiff=True), "TIFF", "tif", id="bigtiff"),
        pytest.param(lambda tmp: _pil_bytes("WEBP"), "WebP", "webp", id="webp"),
        pytest.param(lambda tmp: _pil_bytes("BMP"), "BMP", "bmp", id="bmp"),
        pytest.param(lambda tmp: _pil_bytes("GIF"), "GIF", "gif", id="gif"),
        pytest.param(lambda tmp: _pil_bytes("HEIF"), "HEIC/HEIF", "heic", id="heic"),
        pytest.param(lambda tmp: _pil_bytes("AVIF"), "AVIF", "avif", id="avif"),
        pytest.param(_pdf_bytes, "PDF", "pdf", id="pdf"),
    ],
)
def test_real_files_are_recognised_by_their_bytes(
    tmp_path: Path, make: object, name: str, extension: str
) -> None:
    data = make(tmp_path)  # type: ignore[operator]
    found = formats.sniff(data[: formats.SNIFF_BYTES])
    assert found is not None and found.name == name
    # Stored uploads are named from the bytes: a wrong declared type changes nothing.
    assert extension_for(data, "image/png") == extension


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 16


@pytest.mark.parametrize(
    ("head", "name"),
    [
        pytest.param(_ftyp(b"heic", b"mif1", b"heic"), "HEIC/HEIF", id="iphone-heic"),
        pytest.param(_ftyp(b"mif1", b"heic"), "HEIC/HEIF", id="generic-major-heic-compatible"),
        pytest.param(_ftyp(b"heix", b"mif1"), "HEIC/HEIF", id="10-bit-heix"),
        pytest.param(_ftyp(b"msf1", b"hevc"), "HEIC/HEIF", id="heic-sequence"),
        pytest.param(_ftyp(b"avif", b"mif1", b"miaf"), "AVIF", id="avif"),
        pytest.param(_ftyp(b"mif1", b"avif", b"miaf"), "AVIF", id="generic-major-avif-compatible"),
        pytest.param(_ftyp(b"avis", b"msf1"), "AVIF", id="avif-sequence"),
        pytest.param(_ftyp(b"isom", b"mp41"), None, id="mp4-video"),
        pytest.param(_ftyp(b"qt  "), None, id="quicktime"),
        pytest.param(b"RIFF\x00\x00\x00\x00WAVEfmt ", None, id="wav-is-not-webp"),
        pytest.param(b"PK\x03\x04", None, id="zip"),
        pytest.param(b"", None, id="nothing"),
    ],
)
def test_iso_media_brands_tell_heic_from_avif_from_video(head: bytes, name: str | None) -> None:
    found = formats.sniff(head)
    assert (found.name if found else None) == name


@pytest.mark.parametrize(
    ("mime", "file_name", "acceptable"),
    [
        ("image/jpeg", "", True),
        ("IMAGE/HEIC; charset=binary", "", True),
        ("application/pdf", "letter.pdf", True),
        ("application/octet-stream", "IMG_0001.HEIC", True),  # phones often send HEIC untyped
        ("", "scan.tif", True),
        ("image/x-icon", "favicon.ico", True),  # an image type: the decoder names the problem
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "notes.docx", False),
        ("application/zip", "photos.zip", False),
        ("application/octet-stream", "README", False),
    ],
)
def test_which_announced_files_are_worth_downloading(mime: str, file_name: str, acceptable: bool) -> None:
    assert formats.upload_acceptable(mime, file_name) is acceptable


def test_every_pil_format_in_the_table_can_be_opened_by_this_pillow() -> None:
    # AVIF needs Pillow >= 11.3 with libavif, HEIF needs pillow-heif registered: both are dependencies.
    assert formats.pil_openers() == _OPEN_AS
    assert set(formats.pil_openers()) <= set(Image.OPEN)


def test_each_decoder_name_maps_back_to_one_format() -> None:
    decoders = [name for fmt in formats.FORMATS for name in fmt.decoders]
    assert len(decoders) == len(set(decoders))
    assert [formats.for_decoder(name.lower()) is not None for name in decoders] == [True] * len(decoders)


def test_the_api_accepts_every_listed_type() -> None:
    assert set(formats.mime_types()) | {formats.UNTYPED} == IMAGE_MIME_TYPES


@pytest.mark.parametrize("code", ["image_not_image", "bot_not_image", "ui_error_format"])
def test_messages_name_every_format_in_both_languages(code: str) -> None:
    message = msg(code)
    for fmt in formats.FORMATS:
        assert fmt.name in message.zh and fmt.name in message.en


def test_the_readme_formats_line_lists_exactly_the_table() -> None:
    found = README_LINE.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert found is not None, "README.md lost its '**Formats / 支持的格式:** … —' line"
    assert found.group(1).split(", ") == [fmt.name for fmt in formats.FORMATS]


def _accept(page: str) -> str:
    found = re.search(
        r'<input type="file"[^>]*\saccept="([^"]*)"', (STATIC / page).read_text(encoding="utf-8")
    )
    assert found is not None
    return found.group(1)


def test_the_web_page_file_picker_offers_every_format() -> None:
    assert _accept("index.html") == formats.accept_attribute(), (
        "index.html's accept= must be service.formats.accept_attribute(): " + formats.accept_attribute()
    )


def test_the_kiosk_keeps_a_plain_camera_picker() -> None:
    # `capture` opens the camera only for image types; the server reads whatever the camera gives (HEIC too).
    assert _accept("kiosk.html") == "image/*"
