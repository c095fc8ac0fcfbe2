"""What the OCR engine returns for one image: text in reading order, every line's box and confidence.

`OcrPage.to_dict()` is the plain-JSON form the backend puts in `Answer.extra["ocr_pages"]` and the sidecar
keeps (`ocr_lines`); `service.sidecars.alto` writes ALTO XML from the same dicts, so the sidecar alone is
enough to write ALTO later.

Coordinates: every box is in the pixels of the image *as given* (the scan as stored), whatever rotation was
needed to read it; `rotation` says how far to turn that image clockwise to show the page upright.

Confidence: a line's confidence is RapidOCR's score, the mean of its characters' probabilities. On rendered
lines degraded by size (12–20 px), contrast, blur and noise (576 lines, 429 read), 37 of the 39 lines read
wrongly scored under 0.95 (35 under 0.93), against 11 of the 390 lines read correctly (2 under 0.93); the
two wrong lines above 0.95 were 國 read as 国 and a dropped "-7" at 0.945. A line's lowest character
probability separated no better. Since a flagged number costs a reviewer a glance and a silently wrong one
costs the archive its trust, the threshold is 0.95 (BENCHMARKS.md has the flag rates at 0.90–0.97 on the
benchmark corpus).

Dropped lines: RapidOCR leaves out what it recognised with a score under its floor (0.5). On the benchmark's
unruled score tables those were exactly the cells that came out empty although a score was printed there
("84", twice), so such boxes are kept in `dropped` (block and row -1, not in the text) and mark the page
`needs_review` too: an empty cell that should hold a number must not pass silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Lines under this confidence mark the page `needs_review` (see the module docstring for the measurements).
REVIEW_CONFIDENCE = 0.95


@dataclass(frozen=True)
class OcrLine:
    """One recognised box, in reading order.

    `direction` is where its text runs in the image as given (`ltr`, `rtl`, `ttb` for a column read top to
    bottom, `btt`; `""` for a box too square to tell). `block` and `row` number the block and printed line
    (row, or column for vertical text) it belongs to, in reading order over the page; `cell` is its column
    when the row is a table row.
    """

    text: str
    box: tuple[tuple[float, float], ...]
    confidence: float
    direction: str = ""
    block: int = 0
    row: int = 0
    cell: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: box corners rounded to 0.1 px, confidence to 4 places."""
        return {
            "text": self.text,
            "box": [[round(x, 1), round(y, 1)] for x, y in self.box],
            "confidence": round(self.confidence, 4),
            "direction": self.direction,
            "block": self.block,
            "row": self.row,
            "cell": self.cell,
        }


@dataclass(frozen=True)
class OcrPage:
    """The structured reading of one image (see the module docstring for coordinates and confidence)."""

    text: str
    markdown: str
    lines: tuple[OcrLine, ...]
    rotation: int
    needs_review: bool
    width: int
    height: int
    tables: tuple[tuple[tuple[str, ...], ...], ...] = ()
    vertical: bool = False
    reads: int = 1
    review_threshold: float = REVIEW_CONFIDENCE
    dropped: tuple[OcrLine, ...] = ()
    # "ocr" when read from pixels, "text_layer" when the text is a PDF page's own (no boxes, no confidence).
    source: str = "ocr"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form for `Answer.extra["ocr_pages"]`, sidecars and `service.sidecars.alto`."""
        return {
            "text": self.text,
            "markdown": self.markdown,
            "rotation": self.rotation,
            "needs_review": self.needs_review,
            "review_threshold": self.review_threshold,
            "width": self.width,
            "height": self.height,
            "vertical": self.vertical,
            "reads": self.reads,
            "lines": [line.to_dict() for line in self.lines],
            "dropped": [line.to_dict() for line in self.dropped],
            "tables": [[list(row) for row in table] for table in self.tables],
            "source": self.source,
        }


def text_layer_page(text: str, width: int, height: int) -> OcrPage:
    """A page whose text came from its PDF text layer: exact characters, so nothing to review."""
    return OcrPage(
        text=text,
        markdown=text,
        lines=(),
        rotation=0,
        needs_review=False,
        width=width,
        height=height,
        reads=0,
        source="text_layer",
    )


def needs_review(lines: tuple[OcrLine, ...], threshold: float = REVIEW_CONFIDENCE) -> bool:
    """Whether any line scored under `threshold`."""
    return any(line.confidence < threshold for line in lines)
