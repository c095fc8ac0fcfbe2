"""Reading order from OCR boxes: line direction, page rotation, lines, blocks and their order.

Pure geometry over (text, box, confidence, direction) items, with no RapidOCR import, so it can be tested
with hand-made boxes and reused by any recogniser that reports boxes.

Why direction per box rather than one page orientation: RapidOCR turns every crop that is at least 1.5×
taller than wide by 90° before recognising it, and its direction classifier turns upside-down crops by
180°, so each box is read correctly in any orientation; what it cannot give is the order. A box's shape
(wide or tall) and the classifier's "180" verdict together say which way its text runs in the image:
`ltr` (wide, upright), `rtl` (wide, upside down), `ttb` (a column read top to bottom) or `btt`. Measured on
rendered pages, the classifier is unanimous (score 1.00) on every line of a horizontal page and of a
vertical 繁体 page at 0°, 90°, 180° and 270°, and these four directions give the reading order in all eight
cases: a horizontal page turned 90° clockwise reads exactly like a vertical page (columns right to left),
so the order is right even where the script is misjudged; only the reported rotation would differ.

The page is brought upright by `rotation` (clockwise degrees, from the dominant direction and whether the
script is vertical), then: boxes of one printed line are joined (rows for horizontal text, columns for
vertical text), neighbouring lines of the same orientation form blocks, and blocks are ordered by a
recursive XY-cut, horizontal cuts first (a heading above a vertical body comes first), then vertical cuts,
right to left on a vertical page. Rows of a horizontal block that line up in columns become a table
(`service.backends.ocr_tables`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from service.backends.ocr_tables import find_tables

Direction = Literal["ltr", "ttb", "rtl", "btt"]
Point = tuple[float, float]
Quad = tuple[Point, Point, Point, Point]

# RapidOCR rotates a crop by 90° before recognition when it is at least this much taller than wide; the same
# ratio says here that a box is a column. Boxes nearer to square (one or two characters) have no direction
# of their own and follow the page.
TALL_RATIO = 1.5
# Two boxes belong to one printed line when they share at least this fraction of the smaller box's height
# (width, for columns): half a line tolerates skewed scans without merging neighbouring lines.
LINE_OVERLAP = 0.5
# Neighbouring lines further apart than this many line heights (column widths) start a new block: body text
# is set at ~0.8 line heights of gap, table rows at ~1, a heading or a stamp usually further away.
BLOCK_GAP = 1.5

_CLOCKWISE: dict[Direction, Direction] = {"ltr": "ttb", "ttb": "rtl", "rtl": "btt", "btt": "ltr"}


@dataclass(frozen=True)
class TextBox:
    """One recognised box: its text, four corners (image pixels, clockwise from top-left), confidence."""

    text: str
    box: Quad
    confidence: float
    direction: Direction | None = None


@dataclass(frozen=True)
class Row:
    """One printed line (or column): indices of its boxes in reading order.

    For a table row, `cells` holds one string per column ("" for an empty cell) and `columns` the column of
    each box; `table` numbers the table on the page.
    """

    boxes: tuple[int, ...]
    cells: tuple[str, ...] | None = None
    columns: tuple[int, ...] | None = None
    table: int | None = None


@dataclass(frozen=True)
class Block:
    """Neighbouring lines of one orientation, in reading order."""

    vertical: bool
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class PageLayout:
    """The blocks of a page in reading order, and the tables found in them (rows × columns of cells)."""

    blocks: tuple[Block, ...]
    tables: tuple[tuple[tuple[str, ...], ...], ...]


def as_quad(points: Sequence[Sequence[float]]) -> Quad:
    """Four (x, y) points as a tuple of float pairs."""
    p = [(float(pt[0]), float(pt[1])) for pt in points]
    if len(p) != 4:
        raise ValueError(f"a box has 4 corners, got {len(p)}")
    return (p[0], p[1], p[2], p[3])


def box_direction(box: Quad, flipped: bool) -> Direction | None:
    """Which way the text of `box` runs, from its shape and the direction classifier's 180° verdict."""
    (x0, y0), (x1, y1), _, (x3, y3) = box
    width = math.hypot(x1 - x0, y1 - y0)
    height = math.hypot(x3 - x0, y3 - y0)
    if height >= TALL_RATIO * width:
        return "btt" if flipped else "ttb"
    if width >= TALL_RATIO * height:
        return "rtl" if flipped else "ltr"
    return None


def rotate_direction(direction: Direction, degrees: int) -> Direction:
    """The direction a line running `direction` has after the image is turned `degrees` clockwise."""
    for _ in range((degrees // 90) % 4):
        direction = _CLOCKWISE[direction]
    return direction


def rotate_quad(box: Quad, degrees: int, width: float, height: float) -> Quad:
    """`box` in an image of `width`×`height` turned `degrees` clockwise, corners again from top-left."""
    turns = (degrees // 90) % 4
    points = list(box)
    w, h = width, height
    for _ in range(turns):
        points = [(h - y, x) for x, y in points]
        w, h = h, w
    start = min(range(4), key=lambda i: (points[i][0] + points[i][1], points[i][1]))
    p = points[start:] + points[:start]  # rotation keeps the corners clockwise; restart at top-left
    return (p[0], p[1], p[2], p[3])


def dominant_direction(items: Sequence[TextBox], min_confidence: float = 0.0) -> Direction:
    """The direction most characters run in, counting lines of at least `min_confidence` when there are any.

    Lines the recogniser doubts are often the ones read at the wrong angle: on an unruled table turned
    270°, the cells of one column merge into sideways "rows" of wrong digits (0.73–0.87) that outnumber the
    column headings read correctly (1.00). Without a direction anywhere, `ltr`.
    """
    sure = [item for item in items if item.confidence >= min_confidence] or list(items)
    weight: dict[Direction, int] = {}
    for item in sure:
        if item.direction is not None:
            weight[item.direction] = weight.get(item.direction, 0) + len(item.text)
    if not weight:
        return "ltr"
    return max(("ltr", "ttb", "rtl", "btt"), key=lambda d: weight.get(d, 0))  # ties keep ltr first


def page_rotation(dominant: Direction, vertical_script: bool) -> int:
    """Clockwise degrees that make the page upright: horizontal text runs ltr then, vertical text ttb."""
    target: Direction = "ttb" if vertical_script else "ltr"
    return next(deg for deg in (0, 90, 180, 270) if rotate_direction(dominant, deg) == target)


@dataclass
class _Placed:
    index: int
    x0: float
    y0: float
    x1: float
    y1: float
    vertical: bool


@dataclass
class _Line:
    members: list[_Placed]
    vertical: bool

    @property
    def x0(self) -> float:
        return min(m.x0 for m in self.members)

    @property
    def x1(self) -> float:
        return max(m.x1 for m in self.members)

    @property
    def y0(self) -> float:
        return min(m.y0 for m in self.members)

    @property
    def y1(self) -> float:
        return max(m.y1 for m in self.members)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return min(a1, b1) - max(a0, b0)


def _group_lines(placed: list[_Placed], vertical: bool) -> list[_Line]:
    """Join boxes of one printed line: rows by shared height, columns by shared width."""

    def across(p: _Placed) -> tuple[float, float]:  # the extent perpendicular to the text
        return (p.x0, p.x1) if vertical else (p.y0, p.y1)

    ordered = sorted(placed, key=lambda p: -(p.x0 + p.x1) if vertical else p.y0 + p.y1)
    lines: list[_Line] = []
    for item in ordered:
        if lines:
            line = lines[-1]
            lo = min(across(m)[0] for m in line.members)
            hi = max(across(m)[1] for m in line.members)
            a0, a1 = across(item)
            smaller = min(a1 - a0, hi - lo)
            if smaller > 0 and _overlap(a0, a1, lo, hi) >= LINE_OVERLAP * smaller:
                line.members.append(item)
                continue
        lines.append(_Line([item], vertical))
    for line in lines:
        line.members.sort(key=lambda m: m.y0 if vertical else m.x0)
    return lines


def _group_blocks(lines: list[_Line], vertical: bool) -> list[list[_Line]]:
    """Split lines (already in reading order) where the gap is wide or they no longer overlap."""
    blocks: list[list[_Line]] = []
    for line in lines:
        if blocks:
            block = blocks[-1]
            last = block[-1]
            if vertical:
                gap = last.x0 - line.x1
                size = max(last.x1 - last.x0, line.x1 - line.x0)
                beside = _overlap(line.y0, line.y1, min(b.y0 for b in block), max(b.y1 for b in block)) > 0
            else:
                gap = line.y0 - last.y1
                size = max(last.y1 - last.y0, line.y1 - line.y0)
                beside = _overlap(line.x0, line.x1, min(b.x0 for b in block), max(b.x1 for b in block)) > 0
            if beside and gap <= BLOCK_GAP * size:
                block.append(line)
                continue
        blocks.append([line])
    return blocks


def _bounds(block: list[_Line]) -> tuple[float, float, float, float]:
    return (
        min(b.x0 for b in block),
        min(b.y0 for b in block),
        max(b.x1 for b in block),
        max(b.y1 for b in block),
    )


def _split(blocks: list[list[_Line]], axis: int) -> list[list[list[_Line]]]:
    """Groups of blocks separated by a clear gap along `axis` (0 = x, 1 = y), in increasing order."""
    ordered = sorted(blocks, key=lambda b: _bounds(b)[axis])
    groups: list[list[list[_Line]]] = []
    end = -math.inf
    for block in ordered:
        bounds = _bounds(block)
        if not groups or bounds[axis] >= end:
            groups.append([])
        groups[-1].append(block)
        end = max(end, bounds[axis + 2])
    return groups


def _order_blocks(blocks: list[list[_Line]], right_to_left: bool) -> list[list[_Line]]:
    """Recursive XY-cut: bands top to bottom, then groups left to right (right to left when vertical)."""
    if len(blocks) <= 1:
        return blocks
    bands = _split(blocks, axis=1)
    if len(bands) > 1:
        return [b for band in bands for b in _order_blocks(band, right_to_left)]
    groups = _split(blocks, axis=0)
    if len(groups) > 1:
        if right_to_left:
            groups.reverse()
        return [b for group in groups for b in _order_blocks(group, right_to_left)]
    return sorted(blocks, key=lambda b: (_bounds(b)[1], -_bounds(b)[2] if right_to_left else _bounds(b)[0]))


def layout_page(
    items: Sequence[TextBox], width: float, height: float, rotation: int = 0, vertical: bool | None = None
) -> PageLayout:
    """Order `items` for reading once the page is turned `rotation` degrees clockwise.

    `vertical` says whether the page is set in columns (blocks then go right to left, and boxes without a
    direction of their own are columns); by default the upright page's dominant direction decides.
    """
    upright = [rotate_quad(item.box, rotation, width, height) for item in items]
    directions = [None if i.direction is None else rotate_direction(i.direction, rotation) for i in items]
    if vertical is None:
        turned = [
            TextBox(i.text, q, i.confidence, d) for i, q, d in zip(items, upright, directions, strict=True)
        ]
        vertical = dominant_direction(turned) in ("ttb", "btt")
    placed = []
    for index, (quad, direction) in enumerate(zip(upright, directions, strict=True)):
        xs = [p[0] for p in quad]
        ys = [p[1] for p in quad]
        columnar = vertical if direction is None else direction in ("ttb", "btt")
        placed.append(_Placed(index, min(xs), min(ys), max(xs), max(ys), columnar))

    blocks: list[list[_Line]] = []
    for columnar in (False, True):
        lines = _group_lines([p for p in placed if p.vertical == columnar], columnar)
        blocks.extend(_group_blocks(lines, columnar))

    out: list[Block] = []
    tables: list[tuple[tuple[str, ...], ...]] = []
    for block in _order_blocks(blocks, right_to_left=vertical):
        rows = [Row(tuple(m.index for m in line.members)) for line in block]
        if not block[0].vertical:
            spans = [[(m.x0, m.x1, items[m.index].text) for m in line.members] for line in block]
            for table in find_tables(spans):
                number = len(tables)
                tables.append(tuple(table.cells[r] for r in range(table.first, table.last + 1)))
                for r in range(table.first, table.last + 1):
                    rows[r] = Row(rows[r].boxes, table.cells[r], table.columns[r], number)
        out.append(Block(block[0].vertical, tuple(rows)))
    return PageLayout(tuple(out), tuple(tables))


def row_text(row: Row, items: Sequence[TextBox]) -> str:
    """A row as plain text: table cells joined by tabs (empty cells kept), other boxes by a space."""
    if row.cells is not None:
        return "\t".join(row.cells)
    return " ".join(items[i].text for i in row.boxes)


def page_text(layout: PageLayout, items: Sequence[TextBox]) -> str:
    """Every row of every block in reading order, one per line."""
    return "\n".join(row_text(row, items) for block in layout.blocks for row in block.rows)


def _markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [fmt(rows[0]), "|" + "---|" * len(rows[0]), *(fmt(r) for r in rows[1:])]


def page_markdown(layout: PageLayout, items: Sequence[TextBox]) -> str:
    """Like `page_text`, with each table as a Markdown table (first row as header) set off by blank lines."""
    parts: list[str] = []
    rows = [row for block in layout.blocks for row in block.rows]
    index = 0
    while index < len(rows):
        row = rows[index]
        if row.table is None:
            parts.append(row_text(row, items))
            index += 1
            continue
        table = [r for r in rows[index:] if r.table == row.table]
        if parts and parts[-1] != "":
            parts.append("")
        parts.extend(_markdown_table([r.cells or () for r in table]))
        parts.append("")
        index += len(table)
    while parts and parts[-1] == "":
        parts.pop()
    return "\n".join(parts)
