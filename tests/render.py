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
