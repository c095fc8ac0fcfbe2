"""Structured reading with the real RapidOCR: vertical 繁体 notices, tables, turned scans, doubtful lines."""

from __future__ import annotations

import difflib
import json
from typing import Any

import pytest
from PIL import Image

from bench.render import fade_region, render_table_image, render_text_image, render_vertical_page
from service.backends.base import single_image_request
from service.backends.ocr_backend import OcrBackend, OcrEngine
from service.backends.ocr_page import REVIEW_CONFIDENCE, OcrPage
from service.config import Config

TITLE = "臺北縣政府佈告"
BODY = ["為佈告事照得本縣近來盜匪橫行", "凡我居民務須互相守望", "如有形跡可疑之人即行報告", "切切此佈"]
SIGNATURE = "中華民國三十七年五月　　縣長李德明"
SEAL = "臺北縣印"
SCORES = [
    ["姓名", "语文", "数学", "英语"],
    ["张三", "92", "88", "95"],
    ["李四", "85", "", "90"],
    ["王五", "78", "91", "83"],
]
HORIZONTAL = ["图问档案馆 2024年3月", "Archive scan No. 17", "上海市第三中学 毕业合影", "照片由王老师提供"]


def turned(image: Image.Image, degrees: int) -> Image.Image:
    """`image` as a scanner that fed it turned `degrees` clockwise would store it."""
    return image.rotate(-degrees, expand=True)


def squash(text: str) -> str:
    return "".join(text.split())


def similar(expected: str, actual: str) -> float:
    return difflib.SequenceMatcher(None, squash(expected), squash(actual)).ratio()


def position(lines: list[str], expected: str) -> int:
    """Index of the output line that best matches `expected` (asserting it is really there)."""
    scores = [similar(expected, line) for line in lines]
    best = max(range(len(lines)), key=lambda i: scores[i])
    assert scores[best] >= 0.8, (expected, lines)
    return best


@pytest.fixture(scope="module")
def notice() -> Image.Image:
    return render_vertical_page([*BODY, SIGNATURE], title=TITLE, stamp=SEAL)


@pytest.fixture(scope="module")
def notice_page(ocr_engine: OcrEngine, notice: Image.Image) -> OcrPage:
    return ocr_engine.read_page(notice)


@pytest.fixture(scope="module")
def scores() -> Image.Image:
    return render_table_image(SCORES, title="学生成绩单")


def test_vertical_notice_reads_title_then_columns_right_to_left(notice_page: OcrPage) -> None:
    lines = notice_page.text.split("\n")

    order = [position(lines, text) for text in [TITLE, *BODY, SIGNATURE.replace("\u3000", "")]]

    assert order == sorted(order) and order[0] == 0
    assert notice_page.vertical and notice_page.rotation == 0
    assert not notice_page.needs_review


def test_vertical_notice_signature_follows_the_body_and_the_seal_is_read(notice_page: OcrPage) -> None:
    text = squash(notice_page.text)

    assert text.index("縣長李德明") > text.index("切切此佈")
    assert all(char in text[text.index("縣長李德明") :] for char in SEAL)


def test_vertical_lines_carry_direction_boxes_and_confidence(
    notice_page: OcrPage, notice: Image.Image
) -> None:
    body = [line for line in notice_page.lines if line.text == BODY[0]]

    assert len(body) == 1 and body[0].direction == "ttb"
    xs = [x for x, _ in body[0].box]
    ys = [y for _, y in body[0].box]
    assert min(xs) > notice.width * 0.75  # the first column is the rightmost
    assert max(ys) - min(ys) > 10 * (max(xs) - min(xs))
    assert body[0].confidence >= REVIEW_CONFIDENCE


@pytest.mark.parametrize(("degrees", "rotation"), [(90, 270), (180, 180)])
def test_turned_vertical_notice_reads_in_the_same_order(
    ocr_engine: OcrEngine, notice: Image.Image, notice_page: OcrPage, degrees: int, rotation: int
) -> None:
    page = ocr_engine.read_page(turned(notice, degrees))

    assert similar(notice_page.text, page.text) >= 0.95, page.text
    assert page.rotation == rotation and page.vertical


def test_vertical_notice_turned_270_reads_in_order(
    ocr_engine: OcrEngine, notice: Image.Image, notice_page: OcrPage
) -> None:
    # Its columns become upright rows, so it reads like a horizontal page; the order is still right, but
    # its rotation is reported as 0 (telling the two apart would cost a second recognition on every page).
    page = ocr_engine.read_page(turned(notice, 270))

    assert similar(notice_page.text, page.text) >= 0.95, page.text


@pytest.mark.parametrize(("degrees", "rotation"), [(0, 0), (90, 270), (180, 180), (270, 90)])
def test_turned_horizontal_scan_reads_top_line_first(
    ocr_engine: OcrEngine, degrees: int, rotation: int
) -> None:
    scan = render_text_image(HORIZONTAL, size=(900, 500))

    page = ocr_engine.read_page(turned(scan, degrees))

    lines = page.text.split("\n")
    assert [position(lines, text) for text in HORIZONTAL] == [0, 1, 2, 3]
    assert page.rotation == rotation and not page.vertical


def test_boxes_stay_in_the_coordinates_of_the_turned_scan(ocr_engine: OcrEngine) -> None:
    scan = turned(render_text_image(HORIZONTAL, size=(900, 500)), 90)  # 500 wide, 900 high

    page = ocr_engine.read_page(scan)

    first = page.lines[0]
    assert similar(HORIZONTAL[0], first.text) >= 0.9
    assert (page.width, page.height) == (500, 900)
    assert min(x for x, _ in first.box) > 400  # the top line of the page is now the rightmost column
    assert first.direction == "ttb"


def test_table_keeps_the_empty_cell_and_the_scores_in_their_columns(
    ocr_engine: OcrEngine, scores: Image.Image
) -> None:
    page = ocr_engine.read_page(scores)

    assert page.tables == (tuple(tuple(row) for row in SCORES),)
    assert page.text.split("\n")[1:] == ["\t".join(row) for row in SCORES]
    assert "| 李四 | 85 |  | 90 |" in page.markdown.split("\n")
    assert {line.cell for line in page.lines if line.text == "90"} == {3}


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_turned_table_reads_the_same_cells(ocr_engine: OcrEngine, scores: Image.Image, degrees: int) -> None:
    # Short cells ("92") are too square for RapidOCR to turn, so a turned table is read again upright.
    page = ocr_engine.read_page(turned(scores, degrees))

    assert page.tables == (tuple(tuple(row) for row in SCORES),)
    assert page.rotation == (360 - degrees) % 360
    assert page.reads == 2


def test_a_faded_blurred_line_marks_the_page_for_review(ocr_engine: OcrEngine) -> None:
    lines = ["图问档案馆 借阅登记", "借阅人 王建国", "电话 021-6478 3391", "归还日期 1987年6月12日"]
    scan = render_text_image(lines, size=(800, 400), font_size=32)
    faded = fade_region(scan, (20, 140, 780, 196), contrast=1.0, blur=1.8, noise=60, seed=4)

    page = ocr_engine.read_page(faded)

    doubtful = [line for line in page.lines if line.confidence < REVIEW_CONFIDENCE]
    assert page.needs_review
    assert doubtful and all(140 <= min(y for _, y in line.box) <= 196 for line in doubtful)
    assert not ocr_engine.read_page(scan).needs_review


def test_backend_answers_a_table_in_markdown_and_keeps_pages_in_extra(
    ocr_engine: OcrEngine, scores: Image.Image
) -> None:
    backend = OcrBackend(Config(), engine=ocr_engine)

    answer = backend.answer(single_image_request(scores, "成绩？"))

    pages: list[dict[str, Any]] = answer.extra["ocr_pages"]  # type: ignore[assignment]
    assert "|---|---|---|---|" in answer.text
    assert "\t" in str(answer.extra["ocr_text"]) and "|" not in str(answer.extra["ocr_text"])
    assert json.loads(json.dumps(pages)) == pages
    assert set(pages[0]) >= {
        "text",
        "markdown",
        "lines",
        "dropped",
        "rotation",
        "needs_review",
        "width",
        "height",
    }
    assert set(pages[0]["lines"][0]) >= {"text", "box", "confidence", "direction", "block", "row", "cell"}
    assert pages[0]["text"] == answer.extra["ocr_texts"][0]  # type: ignore[index]
