"""The image pipeline on real files: every promised format, orientation, size caps, draft decoding of big
JPEGs, and every way a bad file is turned into a bilingual, user-facing error.

Content sniffing is deliberate: a PNG named `scan.jpg` decodes as the PNG it is (see `service/images.py`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, JpegImagePlugin

from service.config import ImagesConfig
from service.errors import PermanentError
from service.images import decode_image, sha256_file
from tests.documents import photo_bytes

RED = (220, 30, 30)
GREEN = (30, 200, 60)
BLUE = (30, 60, 220)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
ORIENTATION = 0x0112
CJK = re.compile(r"[\u4e00-\u9fff]")

Builder = Callable[[Path], Path]


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    """Lossy formats move colours a little; a user would still call it the same colour."""
    pairs = zip(actual, expected, strict=True)  # a different channel count raises: a wrong mode, not a colour
    return all(abs(a - e) <= tolerance for a, e in pairs)


def pixel(page: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = page.getpixel(xy)
    assert isinstance(value, tuple)  # RGB pages give (r, g, b)
    return value


def centre(page: Image.Image) -> tuple[int, ...]:
    return pixel(page, (page.width // 2, page.height // 2))


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims `width`×`height`: what a decompression bomb looks like to PIL."""
    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over "IHDR" + its 13 bytes
    path.write_bytes(bytes(data))
    return path


def assert_bilingual(error: PermanentError) -> None:
    text = str(error)
    assert " / " in text
    assert CJK.search(text.split(" / ")[0])
    assert error.message.zh and error.message.en


# --- builders: each writes one real file into tmp_path ------------------------------------------------


def jpeg(tmp: Path) -> Path:
    solid(RED).save(tmp / "photo.jpg", quality=95)
    return tmp / "photo.jpg"


def cmyk_jpeg(tmp: Path) -> Path:
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(tmp / "print.jpg", quality=95)
    return tmp / "print.jpg"


def mpo(tmp: Path) -> Path:
    solid(RED).save(tmp / "phone.mpo", "MPO", save_all=True, append_images=[solid(GREEN)])
    return tmp / "phone.mpo"


def png(tmp: Path) -> Path:
    solid(GREEN).save(tmp / "scan.png")
    return tmp / "scan.png"


def png_named_jpg(tmp: Path) -> Path:
    solid(GREEN).save(tmp / "renamed.jpg", "PNG")
    return tmp / "renamed.jpg"


def webp(tmp: Path) -> Path:
    solid(BLUE).save(tmp / "web.webp", lossless=True)
    return tmp / "web.webp"


def bmp(tmp: Path) -> Path:
    solid(BLUE).save(tmp / "old.bmp")
    return tmp / "old.bmp"


def gif(tmp: Path) -> Path:
    solid(RED).save(tmp / "still.gif")
    return tmp / "still.gif"


def tiff_lzw(tmp: Path) -> Path:
    solid(GREEN).save(tmp / "archive.tif", compression="tiff_lzw")
    return tmp / "archive.tif"


def tiff_fax_g4(tmp: Path) -> Path:
    Image.new("1", (64, 48), 0).save(tmp / "fax.tif", compression="group4")
    return tmp / "fax.tif"


def heic(tmp: Path) -> Path:
    (tmp / "iphone.heic").write_bytes(photo_bytes(solid(GREEN), "HEIF"))
    return tmp / "iphone.heic"


def avif(tmp: Path) -> Path:
    (tmp / "web.avif").write_bytes(photo_bytes(solid(BLUE), "AVIF"))
    return tmp / "web.avif"


FORMATS = [
    pytest.param(jpeg, "JPEG", RED, id="jpeg"),
    pytest.param(cmyk_jpeg, "JPEG", (255, 0, 0), id="jpeg-cmyk"),
    pytest.param(mpo, "MPO", RED, id="mpo-first-of-two"),
    pytest.param(png, "PNG", GREEN, id="png"),
    pytest.param(png_named_jpg, "PNG", GREEN, id="png-named-jpg"),
    pytest.param(webp, "WEBP", BLUE, id="webp"),
    pytest.param(bmp, "BMP", BLUE, id="bmp"),
    pytest.param(gif, "GIF", RED, id="gif"),
    pytest.param(tiff_lzw, "TIFF", GREEN, id="tiff-lzw"),
    pytest.param(tiff_fax_g4, "TIFF", BLACK, id="tiff-1bit-group4"),
    pytest.param(heic, "HEIF", GREEN, id="heic"),
    pytest.param(avif, "AVIF", BLUE, id="avif"),
]


@pytest.mark.parametrize(("build", "fmt", "colour"), FORMATS)
def test_every_promised_format_decodes_to_one_rgb_page(
    tmp_path: Path, build: Builder, fmt: str, colour: tuple[int, int, int]
) -> None:
    decoded = decode_image(build(tmp_path), ImagesConfig())
    assert decoded.format == fmt
    assert [page.mode for page in decoded.pages] == ["RGB"]
    assert (decoded.width, decoded.height) == decoded.pages[0].size == (64, 48)
    assert close_to(centre(decoded.pages[0]), colour)


@pytest.mark.parametrize(("build", "fmt", "colour"), FORMATS)
def test_decoding_never_touches_the_file(tmp_path: Path, build: Builder, fmt: str, colour: object) -> None:
    path = build(tmp_path)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    decode_image(path, ImagesConfig())
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_pages_outlive_the_file(tmp_path: Path) -> None:
    path = jpeg(tmp_path)
    decoded = decode_image(path, ImagesConfig())
    path.unlink()
    assert close_to(centre(decoded.pages[0]), RED)


# --- transparency: scans exported with alpha go on white paper -------------------------------------------


def rgba_png(tmp: Path) -> Path:
    image = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    image.paste((*RED, 255), (32, 0, 64, 48))
    image.save(tmp / "alpha.png")
    return tmp / "alpha.png"


def la_png(tmp: Path) -> Path:
    image = Image.new("LA", (64, 48), (0, 0))
    image.paste((0, 255), (32, 0, 64, 48))
    image.save(tmp / "grey-alpha.png")
    return tmp / "grey-alpha.png"


def palette_png(tmp: Path) -> Path:
    image = Image.new("P", (64, 48), 0)
    image.putpalette([0, 0, 0, *RED])
    image.paste(1, (32, 0, 64, 48))
    image.save(tmp / "palette.png", transparency=0)
    return tmp / "palette.png"


def rgb_png_colour_key(tmp: Path) -> Path:
    image = solid(BLACK)
    image.paste(RED, (32, 0, 64, 48))
    image.save(tmp / "keyed.png", transparency=BLACK)  # tRNS: "pure black means transparent"
    return tmp / "keyed.png"


def grey_png_colour_key(tmp: Path) -> Path:
    image = Image.new("L", (64, 48), 0)
    image.paste(90, (32, 0, 64, 48))
    image.save(tmp / "keyed-grey.png", transparency=0)
    return tmp / "keyed-grey.png"


def transparent_gif(tmp: Path) -> Path:
    image = Image.new("P", (64, 48), 0)
    image.putpalette([0, 0, 0, *RED])
    image.paste(1, (32, 0, 64, 48))
    image.save(tmp / "sticker.gif", transparency=0)
    return tmp / "sticker.gif"


def rgba_webp(tmp: Path) -> Path:
    image = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    image.paste((*RED, 255), (32, 0, 64, 48))
    image.save(tmp / "alpha.webp", lossless=True)
    return tmp / "alpha.webp"


@pytest.mark.parametrize(
    ("build", "opaque"),
    [
        pytest.param(rgba_png, RED, id="png-rgba"),
        pytest.param(la_png, BLACK, id="png-grey-alpha"),
        pytest.param(palette_png, RED, id="png-palette-trns"),
        pytest.param(rgb_png_colour_key, RED, id="png-rgb-trns"),
        pytest.param(grey_png_colour_key, (90, 90, 90), id="png-grey-trns"),
        pytest.param(transparent_gif, RED, id="gif-transparent-index"),
        pytest.param(rgba_webp, RED, id="webp-rgba"),
    ],
)
def test_transparent_pixels_become_white_paper(
    tmp_path: Path, build: Builder, opaque: tuple[int, int, int]
) -> None:
    page = decode_image(build(tmp_path), ImagesConfig()).pages[0]
    assert page.mode == "RGB"
    assert pixel(page, (8, 24)) == WHITE  # was fully transparent (and black underneath)
    assert close_to(pixel(page, (56, 24)), opaque)


# --- multi-page and animated files ---------------------------------------------------------------------


def tiff_pages(tmp: Path, colours: list[tuple[int, int, int]]) -> Path:
    first, *rest = [solid(colour) for colour in colours]
    first.save(tmp / "pages.tif", save_all=True, append_images=rest, compression="tiff_deflate")
    return tmp / "pages.tif"


def test_every_tiff_page_comes_back_in_order(tmp_path: Path) -> None:
    decoded = decode_image(tiff_pages(tmp_path, [RED, GREEN, BLUE]), ImagesConfig())
    assert decoded.format == "TIFF"
    assert [centre(page) for page in decoded.pages] == [RED, GREEN, BLUE]


def test_max_pages_keeps_the_first_pages(tmp_path: Path) -> None:
    path = tiff_pages(tmp_path, [RED, GREEN, BLUE, WHITE, BLACK])
    decoded = decode_image(path, ImagesConfig(max_pages=2))
    assert [centre(page) for page in decoded.pages] == [RED, GREEN]
    assert (decoded.source_pages, decoded.dropped_pages, decoded.text_layer) == (5, [3, 4, 5], [None, None])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        pytest.param("anim.gif", {}, id="gif"),
        pytest.param("anim.webp", {"lossless": True}, id="webp"),
        pytest.param("anim.png", {}, id="apng"),
    ],
)
def test_animations_give_their_first_frame_only(tmp_path: Path, name: str, options: dict[str, Any]) -> None:
    path = tmp_path / name
    solid(RED).save(path, save_all=True, append_images=[solid(GREEN), solid(BLUE)], duration=100, **options)
    decoded = decode_image(path, ImagesConfig())
    assert [close_to(centre(page), RED) for page in decoded.pages] == [True]


# --- 16-bit greyscale (archival scanners) --------------------------------------------------------------


def grey16(mode: str) -> Image.Image:
    image = Image.new(mode, (64, 48), 8192)  # an eighth of full scale: dark grey
    image.paste(Image.new(mode, (32, 48), 32768), (32, 0))  # half of full scale: mid grey
    return image


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        pytest.param("I;16", "scan16.tif", id="tiff-little-endian"),
        pytest.param("I;16B", "scan16.tif", id="tiff-big-endian"),
        pytest.param("I;16", "scan16.png", id="png"),
    ],
)
def test_16_bit_grey_keeps_its_tones(tmp_path: Path, mode: str, name: str) -> None:
    grey16(mode).save(tmp_path / name)
    page = decode_image(tmp_path / name, ImagesConfig()).pages[0]
    assert close_to(pixel(page, (8, 24)), (32, 32, 32), tolerance=1)
    assert close_to(pixel(page, (56, 24)), (128, 128, 128), tolerance=1)


# --- EXIF orientation ----------------------------------------------------------------------------------


def left_red_right_blue() -> Image.Image:
    image = solid(BLUE, (400, 200))
    image.paste(RED, (0, 0, 200, 200))
    return image


@pytest.mark.parametrize(
    "name", ["phone.jpg", "export.png", "web.webp", "scan.tif", "iphone.heic", "photo.avif"]
)
@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        pytest.param(1, (400, 200), (50, 100), id="1-as-stored"),
        pytest.param(3, (400, 200), (350, 100), id="3-upside-down"),
        pytest.param(6, (200, 400), (100, 50), id="6-turned-right"),
        pytest.param(8, (200, 400), (100, 350), id="8-turned-left"),
    ],
)
def test_exif_orientation_is_applied_and_reported(
    tmp_path: Path, name: str, orientation: int, size: tuple[int, int], red_at: tuple[int, int]
) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    # Bytes, not the Exif object: pillow-heif turns only those into the HEIF `irot` box, as iPhones write it.
    left_red_right_blue().save(tmp_path / name, exif=exif.tobytes())  # stored 400×200, the left half red
    decoded = decode_image(tmp_path / name, ImagesConfig())
    assert decoded.pages[0].size == (decoded.width, decoded.height) == size
    assert close_to(pixel(decoded.pages[0], red_at), RED)


def test_orientation_applies_to_every_tiff_page(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    pages = [left_red_right_blue() for _ in range(3)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:], exif=exif)
    decoded = decode_image(tmp_path / "pages.tif", ImagesConfig())
    assert [page.size for page in decoded.pages] == [(200, 400)] * 3
    assert [close_to(pixel(page, (100, 50)), RED) for page in decoded.pages] == [True] * 3


# --- size caps and draft decoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_edge", "expected"),
    [
        pytest.param((3000, 1000), 1024, (1024, 341), id="landscape"),
        pytest.param((1000, 3000), 1024, (341, 1024), id="portrait"),
        pytest.param((2048, 2048), 512, (512, 512), id="square-small-cap"),
        pytest.param((500, 400), 1024, (500, 400), id="small-is-not-enlarged"),
    ],
)
def test_pages_are_capped_to_max_edge_keeping_aspect(
    tmp_path: Path, size: tuple[int, int], max_edge: int, expected: tuple[int, int]
) -> None:
    solid(GREEN, size).save(tmp_path / "big.png")
    decoded = decode_image(tmp_path / "big.png", ImagesConfig(max_edge=max_edge))
    assert decoded.pages[0].size == expected
    assert (decoded.width, decoded.height) == size


@pytest.fixture
def draft_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size each JPEG (and MPO) decoder was set to decode at: the proof that draft mode worked."""
    seen: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def recording(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> tuple[str, tuple[int, int, float, float]] | None:
        result = original(self, mode, size)
        seen.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    return seen


MPO_PAIR: dict[str, Any] = {"save_all": True, "append_images": [solid(GREEN)]}


def big_photo() -> Image.Image:
    image = solid(BLUE, (6000, 4000))
    image.paste(RED, (0, 0, 3000, 4000))
    return image


@pytest.mark.parametrize(
    ("name", "options", "orientation", "page_size", "reported"),
    [
        pytest.param("big.jpg", {}, 1, (1024, 683), (6000, 4000), id="jpeg"),
        pytest.param("big.jpg", {}, 6, (683, 1024), (4000, 6000), id="jpeg-turned-right"),
        pytest.param("big.mpo", MPO_PAIR, 1, (1024, 683), (6000, 4000), id="mpo"),
    ],
)
def test_big_jpeg_is_decoded_small_in_draft_mode(
    tmp_path: Path,
    draft_sizes: list[tuple[int, int]],
    name: str,
    options: dict[str, Any],
    orientation: int,
    page_size: tuple[int, int],
    reported: tuple[int, int],
) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    big_photo().save(tmp_path / name, exif=exif, **options)
    decoded = decode_image(tmp_path / name, ImagesConfig(max_edge=1024))
    # libjpeg decoded at 1/4 scale (1500×1000): still covers 1024 px, 16× fewer pixels than full size.
    assert draft_sizes == [(1500, 1000)]
    assert decoded.pages[0].size == page_size
    assert (decoded.width, decoded.height) == reported
    assert close_to(pixel(decoded.pages[0], (10, 10)), RED)


def test_small_jpeg_is_not_drafted(tmp_path: Path, draft_sizes: list[tuple[int, int]]) -> None:
    decode_image(jpeg(tmp_path), ImagesConfig())
    assert draft_sizes == []


# --- failures: every one a bilingual catalogue message ---------------------------------------------------


def empty(tmp: Path) -> Path:
    (tmp / "scan.jpg").touch()
    return tmp / "scan.jpg"


def truncated(build: Builder) -> Builder:
    def cut(tmp: Path) -> Path:
        path = build(tmp)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    return cut


def big_noise_jpeg(tmp: Path) -> Path:
    # Noise, so that half of the file is half of the picture, not just the header.
    Image.effect_noise((256, 256), 64).convert("RGB").save(tmp / "photo.jpg", quality=90)
    return tmp / "photo.jpg"


def big_noise_png(tmp: Path) -> Path:
    Image.effect_noise((256, 256), 64).convert("RGB").save(tmp / "scan.png")
    return tmp / "scan.png"


def random_bytes(tmp: Path) -> Path:
    (tmp / "photo.jpg").write_bytes(os.urandom(4096))
    return tmp / "photo.jpg"


def text_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("这不是图片 / this is not an image\n" * 20, encoding="utf-8")
    return tmp / "notes.txt"


def ppm(tmp: Path) -> Path:
    # PIL can read PPM, but we do not promise it: unsupported formats are never handed to PIL's plugins.
    solid(RED).save(tmp / "old.ppm")
    return tmp / "old.ppm"


def missing(tmp: Path) -> Path:
    return tmp / "gone.jpg"


def directory(tmp: Path) -> Path:
    (tmp / "folder.jpg").mkdir()
    return tmp / "folder.jpg"


def over_one_mb(tmp: Path) -> Path:
    (tmp / "huge.jpg").write_bytes(b"\xff\xd8" + bytes(1_500_000))
    return tmp / "huge.jpg"


def bomb_50000_square(tmp: Path) -> Path:
    return png_claiming(tmp / "bomb.png", 50_000, 50_000)


def header_2000_by_1000(tmp: Path) -> Path:
    return png_claiming(tmp / "wide.png", 2000, 1000)


@pytest.mark.parametrize(
    ("build", "limits", "code"),
    [
        pytest.param(empty, {}, "image_empty", id="zero-bytes"),
        pytest.param(truncated(big_noise_jpeg), {}, "image_corrupt", id="truncated-jpeg"),
        pytest.param(truncated(big_noise_png), {}, "image_corrupt", id="truncated-png"),
        pytest.param(
            truncated(lambda tmp: tiff_pages(tmp, [RED, GREEN])),
            {},
            "image_corrupt",
            id="truncated-tiff",
            marks=pytest.mark.filterwarnings("ignore:Corrupt EXIF data"),
        ),
        pytest.param(truncated(heic), {}, "image_corrupt", id="truncated-heic"),
        pytest.param(truncated(avif), {}, "image_corrupt", id="truncated-avif"),
        pytest.param(random_bytes, {}, "image_not_image", id="random-bytes-named-jpg"),
        pytest.param(text_file, {}, "image_not_image", id="text-file"),
        pytest.param(ppm, {}, "image_not_image", id="unsupported-ppm"),
        pytest.param(missing, {}, "image_unreadable", id="missing-file"),
        pytest.param(directory, {}, "image_unreadable", id="directory"),
        pytest.param(over_one_mb, {"max_file_mb": 1}, "image_too_large", id="over-max-file-mb"),
        pytest.param(bomb_50000_square, {}, "image_bomb", id="bomb-50000x50000"),
        pytest.param(header_2000_by_1000, {"max_pixels": 1_000_000}, "image_bomb", id="over-max-pixels"),
    ],
)
def test_bad_files_give_a_bilingual_permanent_error(
    tmp_path: Path, build: Builder, limits: dict[str, int], code: str
) -> None:
    path = build(tmp_path)
    with pytest.raises(PermanentError) as caught:
        decode_image(path, ImagesConfig(**limits))
    assert caught.value.message.code == code
    assert_bilingual(caught.value)


@pytest.mark.parametrize(
    ("build", "limits", "pixels", "limit"),
    [
        pytest.param(bomb_50000_square, {}, "2500000000", "180000000", id="pil-backstop"),
        pytest.param(
            header_2000_by_1000, {"max_pixels": 1_000_000}, "2000000", "1000000", id="configured-limit"
        ),
    ],
)
def test_bomb_is_refused_from_the_header_quickly(
    tmp_path: Path, build: Builder, limits: dict[str, int], pixels: str, limit: str
) -> None:
    path = build(tmp_path)
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(PermanentError) as caught:
        decode_image(path, ImagesConfig(**limits))
    # Allocating the claimed pixels would take gigabytes and seconds; refusing from the header takes neither.
    assert time.perf_counter() - started < 1.0
    assert pixels in caught.value.message.en and limit in caught.value.message.en
    assert pixels in caught.value.message.zh


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_configured_max_pixels_decides_not_pils_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PIL warns above MAX_IMAGE_PIXELS; that warning must not refuse an image our own limit allows.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    solid(GREEN, (1200, 1000)).save(tmp_path / "large-scan.png")
    decoded = decode_image(tmp_path / "large-scan.png", ImagesConfig(max_pixels=2_000_000))
    assert (decoded.width, decoded.height) == (1200, 1000)


def test_too_large_says_size_and_limit(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as caught:
        decode_image(over_one_mb(tmp_path), ImagesConfig(max_file_mb=1))
    assert "1.4 MB" in caught.value.message.en and "上限 1 MB" in caught.value.message.zh


# --- content hash -------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 7, 8, 64, 3 * (1 << 20) + 5])
@pytest.mark.parametrize("chunk_size", [7, 1 << 20])
def test_sha256_file_matches_hashlib(tmp_path: Path, length: int, chunk_size: int) -> None:
    data = os.urandom(length)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob", chunk_size=chunk_size) == hashlib.sha256(data).hexdigest()
