"""The embedded OCR backend, run for real: RapidOCR's bundled models on rendered Chinese/English scans."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import cast

import pytest
from PIL import Image, ImageDraw

from bench.render import _font, render_text_image
from service.backends.base import Backend, Request, Turn, single_image_request
from service.backends.ocr_backend import OcrBackend, OcrEngine, order_lines
from service.config import Config
from service.messages import msg

SCAN_LINES = [
    "图问档案馆 2024年3月",
    "Archive scan No. 17",
    "上海市第三中学 毕业合影",
    "Class of 1987, Room 302",
    "照片由王老师提供",
]
SECOND_PAGE = ["第二页 Page two", "北京 Beijing 1990"]


def _similarity(expected: str, actual: str) -> float:
    # OCR drops the space between Chinese and digits ("档案馆 2024" → "档案馆2024"); spaces carry no
    # meaning in Chinese, so compare without them.
    return difflib.SequenceMatcher(None, expected.replace(" ", ""), actual.replace(" ", "")).ratio()


@pytest.fixture(scope="module")
def backend() -> Iterator[OcrBackend]:
    ocr = OcrBackend(Config())
    ocr.load()
    yield ocr
    ocr.close()


@pytest.fixture(scope="module")
def scan() -> Image.Image:
    return render_text_image(SCAN_LINES)


def test_is_a_backend(backend: OcrBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.name == "ocr"
    assert backend.model_version[0].isdigit()


def test_engine_version_names_rapidocr_and_models(backend: OcrBackend) -> None:
    assert backend.engine.version.startswith("rapidocr ")
    assert "PP-OCRv6" in backend.engine.version


def test_reads_lines_in_order(backend: OcrBackend, scan: Image.Image) -> None:
    lines = backend.engine.read(scan).split("\n")

    assert len(lines) == len(SCAN_LINES)
    scores = [_similarity(e, a) for e, a in zip(SCAN_LINES, lines, strict=True)]
    assert min(scores) >= 0.9, list(zip(SCAN_LINES, lines, scores, strict=True))


def test_answer_is_the_text_read_without_a_banner(backend: OcrBackend, scan: Image.Image) -> None:
    answer = backend.answer(single_image_request(scan, "照片里是谁？", job_id="j1"))

    assert answer.text == answer.extra["ocr_text"]
    assert _similarity("\n".join(SCAN_LINES), answer.text) >= 0.9
    assert "OCR" not in answer.text and "仅文字识别" not in answer.text
    assert backend.answer_kind == "ocr"
    assert answer.prompt_tokens == 0
    assert answer.completion_tokens == len(answer.text)
    assert answer.finish_reason == "stop"


def test_max_tokens_cuts_the_text_at_that_many_characters(backend: OcrBackend, scan: Image.Image) -> None:
    full = backend.answer(single_image_request(scan, "写了什么？"))
    request = single_image_request(scan, "写了什么？", requested_max_tokens=5)

    cut = backend.answer(request)

    assert cut.text == full.text[:5]
    assert cut.finish_reason == "length"
    assert cut.completion_tokens == 5


def test_config_budget_does_not_cut_a_long_scan(backend: OcrBackend, scan: Image.Image) -> None:
    answer = backend.answer(single_image_request(scan, "写了什么？", max_new_tokens=3))

    assert len(answer.text) > 3
    assert answer.finish_reason == "stop"


def test_blank_page_says_no_text(backend: OcrBackend) -> None:
    blank = Image.new("RGB", (800, 600), "white")

    answer = backend.answer(single_image_request(blank, "写了什么？"))

    assert answer.text == str(msg("ocr_no_text"))
    assert answer.extra["ocr_text"] == ""


def test_two_images_both_read_with_page_labels(backend: OcrBackend, scan: Image.Image) -> None:
    second = render_text_image(SECOND_PAGE, size=(800, 300))
    request = Request(turns=(Turn("user", "整理文字", (scan, second)),))

    answer = backend.answer(request)

    first_page, second_page = cast(list[str], answer.extra["ocr_texts"])
    assert _similarity("\n".join(SCAN_LINES), first_page) >= 0.9
    assert _similarity("\n".join(SECOND_PAGE), second_page) >= 0.9
    assert answer.text.index(str(msg("page_label", n=1))) < answer.text.index(first_page)
    assert answer.text.index(str(msg("page_label", n=2))) < answer.text.index(second_page)


def test_a_follow_up_reads_the_photo_of_the_first_turn(backend: OcrBackend, scan: Image.Image) -> None:
    request = Request(
        turns=(
            Turn("user", "这是什么？", (scan,)),
            Turn("assistant", "一份档案"),
            Turn("user", "上面写的年份是哪一年？"),
        )
    )

    answer = backend.answer(request)

    assert _similarity("\n".join(SCAN_LINES), str(answer.extra["ocr_text"])) >= 0.9


def test_every_photo_of_the_conversation_is_read(backend: OcrBackend, scan: Image.Image) -> None:
    second = render_text_image(SECOND_PAGE, size=(800, 300))
    request = Request(
        turns=(
            Turn("user", "第一张", (scan,)),
            Turn("assistant", "好的"),
            Turn("user", "第二张", (second,)),
        )
    )

    texts = backend.answer(request).extra["ocr_texts"]

    assert len(texts) == 2  # type: ignore[arg-type]
    assert _similarity("\n".join(SECOND_PAGE), str(texts[1])) >= 0.9  # type: ignore[index]


def test_stream_pieces_join_to_answer(backend: OcrBackend, scan: Image.Image) -> None:
    pieces: list[str] = []

    answer = backend.stream(single_image_request(scan, "?"), pieces.append)

    assert "".join(pieces) == answer.text
    assert len(pieces) == len(SCAN_LINES)


def test_batch_keeps_order(backend: OcrBackend, scan: Image.Image) -> None:
    blank = Image.new("RGB", (400, 300), "white")

    answers = backend.batch([single_image_request(blank, "?"), single_image_request(scan, "?")])

    assert [a.extra["ocr_text"] == "" for a in answers] == [True, False]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_image_modes_are_read(backend: OcrBackend, scan: Image.Image, mode: str) -> None:
    text = backend.engine.read(scan.convert(mode))

    assert _similarity("\n".join(SCAN_LINES), text) >= 0.9


def test_boxes_on_one_line_join_left_to_right() -> None:
    # A form line with a wide gap is detected as two boxes; the next line must not slip between them.
    page = render_text_image(["姓名：张三", "第二行 Second line"], size=(1000, 300))
    ImageDraw.Draw(page).text((600, 36), "日期：1987年6月", fill="black", font=_font(36))

    lines = OcrEngine().read(page).split("\n")

    assert len(lines) == 2
    assert _similarity("姓名：张三 日期：1987年6月", lines[0]) >= 0.9
    assert _similarity("第二行 Second line", lines[1]) >= 0.9


def test_order_lines_geometry() -> None:
    def box(x: float, y: float, w: float = 100, h: float = 40) -> list[list[float]]:
        return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]

    # Out of order on purpose, with the right box of line 1 slightly lower (a skewed scan).
    boxes = [box(10, 100), box(300, 8), box(10, 0), box(10, 200)]
    texts = ["second", "one-b", "one-a", "third"]

    assert order_lines(boxes, texts) == ["one-a one-b", "second", "third"]
