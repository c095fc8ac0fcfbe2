"""Render synthetic "scans" of mixed Chinese/English text for tests.

Real files beat fakes: OCR, the image pipeline and the model backends are all tested on images drawn here
with a real CJK font, so the characters on the page are known exactly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Debian/Ubuntu locations, best first. Noto Sans CJK covers Simplified Chinese and Latin well; WenQuanYi
# and Droid are older fallbacks some images still ship.
CJK_FONT_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc"),
    Path("/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallback.ttf"),
)

# Index of the Simplified Chinese face inside Noto's .ttc collections (JP, KR, SC, TC, HK order); other
# fonts have a single face at index 0.
_NOTO_SC_INDEX = 2


class CjkFontMissing(RuntimeError):
    """No CJK font is installed, so Chinese text cannot be rendered."""


@lru_cache(maxsize=1)
def find_cjk_font() -> Path:
    """Return the first installed CJK font file, or raise `CjkFontMissing` naming the apt package."""
    for path in CJK_FONT_CANDIDATES:
        if path.is_file():
            return path
    raise CjkFontMissing(
        "no CJK font found (looked in "
        + ", ".join(str(p) for p in CJK_FONT_CANDIDATES)
        + "); install one with `apt-get install -y fonts-noto-cjk` (or fonts-wqy-zenhei)"
    )


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    path = find_cjk_font()
    index = _NOTO_SC_INDEX if path.name.startswith("Noto") and path.suffix == ".ttc" else 0
    return ImageFont.truetype(str(path), size=size, index=index)


def render_text_image(
    lines: list[str], size: tuple[int, int] = (1000, 700), font_size: int = 36
) -> Image.Image:
    """Draw `lines` in black on a white RGB page of `size`, top to bottom, like a clean scan.

    Lines start at a left margin and are spaced 1.8 × `font_size` apart so OCR sees them as separate
    lines. Raises `ValueError` if the text does not fit, because a silently clipped line would make a test
    assert against characters that are not on the page.
    """
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(font_size)
    margin = max(20, font_size)
    step = round(font_size * 1.8)
    y = margin
    for line in lines:
        left, top, right, bottom = draw.textbbox((margin, y), line, font=font)
        if right > width - margin // 2 or bottom > height - margin // 2:
            raise ValueError(f"line {line!r} does not fit on a {width}×{height} page at {font_size}px")
        draw.text((margin, y), line, fill="black", font=font)
        y += step
    return image


# --- vertical 繁体 pages, tables, degraded lines -------------------------------------------------------

_NOTO_TC_INDEX = 3
_SERIF_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/noto/NotoSerifCJK-Regular.ttc"),
    Path("/usr/share/fonts/noto-cjk/NotoSerifCJK-Regular.ttc"),
)


@lru_cache(maxsize=16)
def cjk_font(size: int, *, traditional: bool = False, serif: bool = False) -> ImageFont.FreeTypeFont:
    """A CJK font: the Traditional Chinese face when `traditional`, a Ming/Song serif when `serif` and
    installed (old notices were set in Ming type), otherwise the font `find_cjk_font()` finds."""
    path = next((p for p in _SERIF_CANDIDATES if p.is_file()), None) if serif else None
    path = path or find_cjk_font()
    index = 0
    if path.name.startswith("Noto") and path.suffix == ".ttc":
        index = _NOTO_TC_INDEX if traditional else _NOTO_SC_INDEX
    return ImageFont.truetype(str(path), size=size, index=index)


def render_vertical_page(
    columns: list[str],
    *,
    title: str | None = None,
    stamp: str | None = None,
    size: tuple[int, int] = (900, 1000),
    font_size: int = 40,
) -> Image.Image:
    """A vertical 繁体 page: `columns` right to left, characters top to bottom, in a Ming serif.

    `title` is set horizontally across the top, as on a 民国 佈告; `stamp` (four characters) is a red square
    seal, read in columns right to left, set beside the foot of the last column like a signature seal. An
    ideographic space (U+3000) in a column leaves one character cell empty. Raises `ValueError` when a
    column does not fit, so tests never assert on clipped text.
    """
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = cjk_font(font_size, traditional=True, serif=True)
    pitch = round(font_size * 1.15)
    top = max(40, font_size)
    if title:
        title_font = cjk_font(round(font_size * 1.4), traditional=True, serif=True)
        draw.text((width / 2, top), title, font=title_font, fill="black", anchor="mt")
        top += round(font_size * 1.4) + 2 * font_size
    x = width - 2 * font_size
    last_x = x
    for column in columns:
        if x < font_size or top + pitch * len(column) > height - font_size // 2:
            raise ValueError(f"column {column!r} does not fit on a {width}×{height} page at {font_size}px")
        for row, char in enumerate(column):
            if char != "\u3000":
                draw.text((x, top + row * pitch), char, font=font, fill="black", anchor="mt")
        last_x = x
        x -= round(font_size * 1.9)
    if stamp:
        seal_x = last_x - font_size - round(font_size * 1.1) * 2 - 12
        if seal_x < font_size // 2:
            raise ValueError(f"the seal does not fit beside the last column on a {width}×{height} page")
        _draw_seal(draw, stamp, (seal_x, top + pitch * (len(columns[-1]) - 2)), font_size)
    return image


def _draw_seal(draw: ImageDraw.ImageDraw, text: str, at: tuple[float, float], font_size: int) -> None:
    if len(text) != 4:
        raise ValueError("a seal holds four characters")
    red = (200, 30, 30)
    cell = round(font_size * 1.1)
    x0, y0 = at
    draw.rectangle((x0, y0, x0 + 2 * cell + 12, y0 + 2 * cell + 12), outline=red, width=4)
    font = cjk_font(font_size, traditional=True, serif=True)
    for i, char in enumerate(text):  # columns right to left, as a seal is read
        col, row = divmod(i, 2)
        cx = x0 + 6 + (1 - col) * cell + cell / 2
        draw.text((cx, y0 + 6 + row * cell + (cell - font_size) / 2), char, font=font, fill=red, anchor="mt")


def render_table_image(
    rows: list[list[str]],
    *,
    title: str | None = None,
    column_widths: list[int] | None = None,
    font_size: int = 32,
    grid: bool = True,
) -> Image.Image:
    """A ruled table (a 成绩单): `rows` of cells, "" for an empty cell, under an optional centred title."""
    columns = len(rows[0])
    widths = column_widths or [font_size * 5] * columns
    row_height = round(font_size * 2)
    margin = font_size
    top = margin + (round(font_size * 2.5) if title else 0)
    width = margin * 2 + sum(widths)
    height = top + row_height * len(rows) + margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(font_size)
    if title:
        draw.text((width / 2, margin), title, font=_font(round(font_size * 1.2)), fill="black", anchor="mt")
    for r, row in enumerate(rows):
        if len(row) != columns:
            raise ValueError(f"row {r} has {len(row)} cells, the table {columns}")
        x = margin
        y = top + r * row_height
        for c, cell in enumerate(row):
            if grid:
                draw.rectangle((x, y, x + widths[c], y + row_height), outline="black", width=2)
            if cell:
                at = (x + font_size // 2, y + row_height / 2)
                draw.text(at, cell, font=font, fill="black", anchor="lm")
            x += widths[c]
    return image


def fade_region(
    image: Image.Image,
    box: tuple[int, int, int, int],
    *,
    contrast: float,
    blur: float,
    noise: float,
    seed: int,
) -> Image.Image:
    """A copy of `image` with `box` faded to `contrast` (0–1 of full ink), blurred and grained, like one
    badly scanned line: the rest of the page stays clean so the test knows which line should be doubted."""
    import numpy as np
    from PIL import ImageFilter

    out = image.convert("RGB").copy()
    region = out.crop(box).convert("L")
    if blur:
        region = region.filter(ImageFilter.GaussianBlur(blur))
    pixels = 255 - (255 - np.asarray(region, dtype=float)) * contrast
    pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape)
    faded = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).convert("RGB")
    out.paste(faded, box[:2])
    return out
