"""Tables rebuilt from OCR boxes: rows × columns, with empty cells kept empty.

Built from boxes because no maintained table recogniser runs offline from its wheel: `rapid-table` 3.0.2
(RapidAI) is a 43 KB wheel whose SLANet/UniTable models are downloaded from modelscope.cn on first use
(`default_models.yaml`), which fails on an offline archive PC.

A table is a run of rows (printed lines of a horizontal block) whose boxes line up: column spans are the x
ranges that boxes cover in more than a quarter of the rows with two or more boxes, and each box then goes
into the span it overlaps most. A row whose box straddles two spans (a heading centred over the table,
a paragraph line) is not a table row, and a row with one box counts only between two table rows (a pupil
whose other cells are empty). What matters most to an archive is that a value never moves into a
neighbour's column: a missing cell stays an empty string, and a row that cannot be placed column by column
stays a plain line instead of being forced into the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A box "straddles" columns when it covers more than this share of two of them (of the box's own width
# where the box is the narrower).
STRADDLE_SHARE = 0.3
# Two rows with two or more boxes make a table; one such row is a form line ("姓名：… 日期：…").
MIN_TABLE_ROWS = 2

Span = tuple[float, float, str]  # x0, x1, text of one box of a row, boxes left to right


@dataclass(frozen=True)
class Table:
    """Rows `first`..`last` (inclusive) of a block are a table.

    `cells[r]` holds row r's cells, one per column ("" when empty); `columns[r]` the column of each of the
    row's boxes, in the row's box order.
    """

    first: int
    last: int
    cells: dict[int, tuple[str, ...]]
    columns: dict[int, tuple[int, ...]]


def _column_spans(rows: Sequence[Sequence[Span]]) -> list[tuple[float, float]]:
    """Column spans: x ranges covered by boxes of more than a quarter of the rows with two or more boxes.

    Counting coverage instead of merging every overlap keeps one stray multi-box row (a title split in two
    boxes, a note) from welding two columns together.
    """
    multi = [row for row in rows if len(row) >= 2]
    tolerance = len(multi) // 4
    edges = sorted({x for row in multi for x0, x1, _ in row for x in (x0, x1)})
    columns: list[tuple[float, float]] = []
    open_at: float | None = None
    for left, right in zip(edges, edges[1:], strict=False):
        middle = (left + right) / 2
        covered = sum(1 for row in multi if any(x0 <= middle <= x1 for x0, x1, _ in row)) > tolerance
        if covered and open_at is None:
            open_at = left
        elif not covered and open_at is not None:
            columns.append((open_at, left))
            open_at = None
    if open_at is not None:
        columns.append((open_at, edges[-1]))
    return columns


def _place(
    row: Sequence[Span], columns: Sequence[tuple[float, float]]
) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """The row's cells by column and each box's column; None when a box straddles columns or lies outside."""
    cells: list[list[str]] = [[] for _ in columns]
    where: list[int] = []
    for x0, x1, text in row:
        overlaps = [max(0.0, min(x1, c1) - max(x0, c0)) for c0, c1 in columns]
        best = max(range(len(columns)), key=lambda i: overlaps[i])
        # Measured against the narrower of box and column: a wide note covering two narrow columns
        # straddles, a cell whose padded box grazes the next column does not.
        shares = [o / max(min(x1 - x0, c1 - c0), 1e-6) for o, (c0, c1) in zip(overlaps, columns, strict=True)]
        if overlaps[best] <= 0 or sum(1 for s in shares if s > STRADDLE_SHARE) > 1:
            return None
        cells[best].append(text)
        where.append(best)
    return tuple(" ".join(c) for c in cells), tuple(where)


def find_tables(rows: Sequence[Sequence[Span]]) -> list[Table]:
    """The tables among a block's rows (each row: its boxes left to right as (x0, x1, text))."""
    if sum(1 for row in rows if len(row) >= 2) < MIN_TABLE_ROWS:
        return []
    columns = _column_spans(rows)
    if len(columns) < 2:
        return []
    placed = [_place(row, columns) for row in rows]
    tables: list[Table] = []
    start = 0
    while start < len(rows):
        if placed[start] is None:
            start += 1
            continue
        end = start
        while end + 1 < len(rows) and placed[end + 1] is not None:
            end += 1
        # Single-box rows at either end of a run are captions or notes, not rows with empty cells.
        first, last = start, end
        while first <= last and len(rows[first]) < 2:
            first += 1
        while last >= first and len(rows[last]) < 2:
            last -= 1
        if first <= last and sum(1 for r in range(first, last + 1) if len(rows[r]) >= 2) >= MIN_TABLE_ROWS:
            rows_placed = {r: p for r in range(first, last + 1) if (p := placed[r]) is not None}
            cells = {r: p[0] for r, p in rows_placed.items()}
            tables.append(Table(first, last, cells, {r: p[1] for r, p in rows_placed.items()}))
        start = end + 1
    return tables
