"""Reading order and tables from hand-made boxes: the geometry of service/backends/ocr_layout.py alone."""

from __future__ import annotations

import pytest

from service.backends.ocr_layout import (
    Direction,
    Quad,
    TextBox,
    as_quad,
    box_direction,
    dominant_direction,
    layout_page,
    page_markdown,
    page_rotation,
    page_text,
    rotate_direction,
    rotate_quad,
)


def quad(x: float, y: float, w: float, h: float) -> Quad:
    return as_quad([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])


def row(text: str, x: float, y: float, w: float | None = None, h: float = 40) -> TextBox:
    return TextBox(text, quad(x, y, w if w is not None else 40 * len(text), h), 0.99, "ltr")


def column(text: str, x: float, y: float, w: float = 40) -> TextBox:
    return TextBox(text, quad(x, y, w, 46 * len(text)), 0.99, "ttb")


def read(items: list[TextBox], size: tuple[int, int] = (1000, 1000), rotation: int = 0) -> list[str]:
    return page_text(layout_page(items, *size, rotation), items).split("\n")


@pytest.mark.parametrize(
    ("w", "h", "flipped", "expected"),
    [
        (300, 40, False, "ltr"),
        (300, 40, True, "rtl"),
        (40, 300, False, "ttb"),
        (40, 300, True, "btt"),
        (50, 45, False, None),
    ],
)
def test_box_direction_from_shape_and_classifier(
    w: float, h: float, flipped: bool, expected: Direction | None
) -> None:
    assert box_direction(quad(10, 10, w, h), flipped) == expected


@pytest.mark.parametrize(
    ("dominant", "vertical", "rotation"),
    [
        ("ltr", False, 0),
        ("rtl", False, 180),
        ("ttb", False, 270),  # a horizontal page scanned turned 90° clockwise
        ("btt", False, 90),
        ("ttb", True, 0),  # a vertical page, upright
        ("btt", True, 180),
        ("rtl", True, 270),
        ("ltr", True, 90),
    ],
)
def test_page_rotation_makes_the_text_run_its_own_way(
    dominant: Direction, vertical: bool, rotation: int
) -> None:
    assert page_rotation(dominant, vertical) == rotation
    assert rotate_direction(dominant, rotation) == ("ttb" if vertical else "ltr")


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotate_quad_round_trip_keeps_corners_from_top_left(degrees: int) -> None:
    box = quad(100, 50, 300, 40)

    turned = rotate_quad(box, degrees, 800, 600)
    size = (600, 800) if degrees in (90, 270) else (800, 600)
    back = rotate_quad(turned, 360 - degrees, *size)

    assert back == box
    assert turned[0] == min(turned, key=lambda p: p[0] + p[1])


def test_rotate_quad_90_moves_the_top_of_the_page_to_the_right() -> None:
    assert rotate_quad(quad(0, 0, 100, 10), 90, 800, 600) == ((590, 0), (600, 0), (600, 100), (590, 100))


def test_vertical_columns_read_right_to_left_under_a_horizontal_title() -> None:
    items = [
        column("凡我居民", 700, 200),
        column("縣長李德明", 600, 200),
        TextBox("臺北縣政府佈告", quad(300, 40, 420, 60), 0.99, "ltr"),
        column("為佈告事照得", 800, 200),
    ]

    assert read(items) == ["臺北縣政府佈告", "為佈告事照得", "凡我居民", "縣長李德明"]
    assert dominant_direction(items) == "ttb"


def test_a_column_split_by_a_gap_joins_top_to_bottom() -> None:
    items = [column("李德明", 600, 700), column("中華民國三十七年", 600, 100), column("切切此佈", 700, 100)]

    assert read(items) == ["切切此佈", "中華民國三十七年 李德明"]


def test_a_seal_left_of_the_body_comes_after_it() -> None:
    seal = [column("臺北", 440, 800, w=50), column("縣印", 380, 800, w=50)]
    body = [column("為佈告事照得本縣", 800, 200), column("縣長李德明", 700, 500)]

    assert read(seal + body) == ["為佈告事照得本縣", "縣長李德明", "臺北", "縣印"]


def test_horizontal_boxes_of_one_line_join_left_to_right() -> None:
    items = [row("second", 10, 100), row("one-b", 300, 8), row("one-a", 10, 0), row("third", 10, 200)]

    assert read(items) == ["one-a one-b", "second", "third"]


def test_an_upside_down_page_reads_bottom_line_first() -> None:
    # Rows of a page turned 180°: the classifier flipped every line, so they run right to left.
    items = [
        TextBox("第一行", quad(700, 900, 200, 40), 0.99, "rtl"),
        TextBox("第二行", quad(700, 800, 200, 40), 0.99, "rtl"),
        TextBox("右", quad(300, 800, 80, 40), 0.99, "rtl"),
    ]

    assert read(items, rotation=180) == ["第一行", "第二行 右"]


SCORES = [
    ["姓名", "语文", "数学", "英语"],
    ["张三", "92", "88", "95"],
    ["李四", "85", "", "90"],
    ["王五", "78", "91", "83"],
]


def table_boxes(rows: list[list[str]], title: str | None = None) -> list[TextBox]:
    items = [row(title, 150, 10, w=300)] if title else []
    for r, cells in enumerate(rows):
        for c, text in enumerate(cells):
            if text:
                items.append(row(text, 20 + 160 * c, 80 + 64 * r, w=30 * len(text)))
    return items


def test_table_keeps_an_empty_cell_empty_and_scores_in_their_columns() -> None:
    items = table_boxes(SCORES, title="学生成绩单 1987年")

    layout = layout_page(items, 800, 600)

    assert layout.tables == (tuple(tuple(r) for r in SCORES),)
    assert read(items) == ["学生成绩单 1987年", *("\t".join(r) for r in SCORES)]


def test_table_as_markdown_with_the_title_above() -> None:
    items = table_boxes([["品名", "尺寸|cm"], ["铜镜", "12"]], title="藏品清单")

    markdown = page_markdown(layout_page(items, 800, 600), items)

    assert markdown == "藏品清单\n\n| 品名 | 尺寸\\|cm |\n|---|---|\n| 铜镜 | 12 |"


def test_a_title_split_in_two_boxes_does_not_weld_columns() -> None:
    # The first box spans the 语文 and 数学 columns; counted as a column it would make them one.
    items = table_boxes(SCORES) + [row("学生成绩单", 150, 10, w=260), row("1987年", 500, 10, w=100)]

    assert layout_page(items, 800, 600).tables[0] == tuple(tuple(r) for r in SCORES)


def test_a_single_form_line_is_not_a_table() -> None:
    items = [
        row("姓名：张三", 10, 10),
        row("日期：1987年6月", 600, 10),
        row("第二行 Second line", 10, 80, w=500),
    ]

    layout = layout_page(items, 1000, 300)

    assert layout.tables == ()
    assert read(items, (1000, 300)) == ["姓名：张三 日期：1987年6月", "第二行 Second line"]


def test_a_row_straddling_columns_stays_a_plain_line() -> None:
    # A note written across two columns cannot be placed cell by cell: forcing it in would move a value.
    rows = SCORES[:2] + [["李四", "85", "", "90"]]
    items = table_boxes(rows) + [row("备注：李四缺考数学", 100, 80 + 64 * 3, w=300)]

    lines = read(items, (800, 600))

    assert lines == ["\t".join(r) for r in rows] + ["备注：李四缺考数学"]
