"""ALTO XML from OCR pages, checked by parsing: structure, reading order, coordinates, confidence."""

from __future__ import annotations

from typing import Any

import pytest
from defusedxml import ElementTree as SafeET

from bench.render import render_vertical_page
from service.backends.ocr_backend import OcrEngine
from service.sidecars.alto import ALTO_NS, alto_xml

NS = {"a": ALTO_NS}


def line(text: str, x: float, y: float, w: float, h: float, **extra: Any) -> dict[str, Any]:
    box = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
    return {"text": text, "box": box, "confidence": 0.98, "direction": "ltr", "block": 0, "row": 0, **extra}


def page(lines: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"width": 1000, "height": 700, "rotation": 0, "lines": lines, **extra}


def parse(xml: bytes) -> Any:
    return SafeET.fromstring(xml)


def attrs(element: Any, *names: str) -> tuple[float, ...]:
    return tuple(float(element.get(name)) for name in names)


def test_header_names_the_schema_unit_and_file() -> None:
    root = parse(
        alto_xml([page([line("图问", 10, 10, 100, 40)])], file_name="scan 01.jpg", software_version="3.10")
    )

    assert root.tag == f"{{{ALTO_NS}}}alto" and root.get("SCHEMAVERSION") == "4.4"
    assert root.find("a:Description/a:MeasurementUnit", NS).text == "pixel"
    assert root.find("a:Description/a:sourceImageInformation/a:fileName", NS).text == "scan 01.jpg"
    assert root.find(".//a:processingSoftware/a:softwareVersion", NS).text == "3.10"


def test_one_page_per_image_with_its_size() -> None:
    pages = [
        page([line("第一页", 10, 10, 120, 40)]),
        page([line("第二页", 10, 10, 120, 40)], width=600, height=800),
    ]

    found = parse(alto_xml(pages)).findall("a:Layout/a:Page", NS)

    assert [(p.get("ID"), p.get("PHYSICAL_IMG_NR"), p.get("WIDTH"), p.get("HEIGHT")) for p in found] == [
        ("P1", "1", "1000", "700"),
        ("P2", "2", "600", "800"),
    ]


def test_image_sizes_override_and_must_match_the_pages() -> None:
    pages = [page([line("一", 10, 10, 40, 40)])]

    assert parse(alto_xml(pages, [(2000, 1400)])).find(".//a:Page", NS).get("WIDTH") == "2000"
    with pytest.raises(ValueError, match="1 pages but 2 image sizes"):
        alto_xml(pages, [(1, 1), (2, 2)])


def test_blocks_lines_and_strings_follow_reading_order_with_box_coordinates() -> None:
    lines = [
        line("学生成绩单", 300, 20, 250, 40, block=0, row=0),
        line("姓名", 40, 100, 80, 36, block=1, row=1, cell=0),
        line("数学", 200, 100, 80, 36, block=1, row=1, cell=1),
        line("张三", 40, 160, 80, 36, block=1, row=2, cell=0),
        line("92", 200, 160, 40, 36, block=1, row=2, cell=1, confidence=0.61),
    ]

    root = parse(alto_xml([page(lines)]))

    blocks = root.findall(".//a:TextBlock", NS)
    assert [len(b.findall("a:TextLine", NS)) for b in blocks] == [1, 2]
    strings = root.findall(".//a:String", NS)
    assert [s.get("CONTENT") for s in strings] == ["学生成绩单", "姓名", "数学", "张三", "92"]
    assert attrs(strings[4], "HPOS", "VPOS", "WIDTH", "HEIGHT") == (200, 160, 40, 36)
    assert strings[4].get("WC") == "0.6100"
    assert attrs(blocks[1], "HPOS", "VPOS", "WIDTH", "HEIGHT") == (40, 100, 240, 96)
    assert [child.tag.split("}")[1] for child in blocks[1].find("a:TextLine", NS)] == [
        "String",
        "SP",
        "String",
    ]


def test_words_split_at_spaces_share_the_box() -> None:
    root = parse(alto_xml([page([line("Room 302", 100, 50, 160, 40)])]))

    first, second = root.findall(".//a:String", NS)
    assert (first.get("CONTENT"), second.get("CONTENT")) == ("Room", "302")
    assert attrs(first, "HPOS", "WIDTH") == (100, 80) and attrs(second, "HPOS", "WIDTH") == (200, 60)


def test_vertical_blocks_run_top_to_bottom_and_turned_pages_say_so() -> None:
    column = line("為佈告事", 800, 100, 46, 184, direction="ttb")

    root = parse(alto_xml([page([column], rotation=270)]))

    assert root.find(".//a:Page", NS).get("ROTATION") == "270"
    assert root.find(".//a:TextBlock", NS).get("BASEDIRECTION") == "ttb"
    assert root.find(".//a:TextLine", NS).get("BASEDIRECTION") == "ttb"


def test_text_is_escaped_and_control_characters_dropped() -> None:
    root = parse(alto_xml([page([line('A&B <"x"> \x07ok', 10, 10, 300, 40)])]))

    assert [s.get("CONTENT") for s in root.findall(".//a:String", NS)] == ["A&B", '<"x">', "ok"]


def test_ids_are_unique_and_an_empty_page_is_still_a_page() -> None:
    pages = [page([line("甲 乙", 10, 10, 100, 40), line("丙", 10, 60, 40, 40, row=1)]), page([])]

    root = parse(alto_xml(pages))

    ids = [e.get("ID") for e in root.iter() if e.get("ID")]
    assert len(ids) == len(set(ids))
    assert root.findall(".//a:Page", NS)[1].find("a:PrintSpace", NS) is not None


def test_a_real_vertical_reading_round_trips(ocr_engine: OcrEngine) -> None:
    notice = render_vertical_page(["為佈告事照得本縣", "凡我居民務須互相守望"], title="臺北縣政府佈告")
    reading = ocr_engine.read_page(notice).to_dict()

    root = parse(alto_xml([reading], file_name="notice.png"))

    blocks = root.findall(".//a:TextBlock", NS)
    assert [b.get("BASEDIRECTION") for b in blocks] == [None, "ttb"]
    text_lines = root.findall(".//a:TextLine", NS)
    contents = ["".join(s.get("CONTENT") for s in tl.findall("a:String", NS)) for tl in text_lines]
    assert contents == [line["text"].replace(" ", "") for line in reading["lines"]]
    first_column = blocks[1].find("a:TextLine/a:String", NS)
    assert float(first_column.get("HPOS")) > notice.width / 2  # the first column is at the right
