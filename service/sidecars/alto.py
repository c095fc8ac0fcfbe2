"""ALTO XML for OCR results: the layout-and-text file library and archive digitisation workflows import.

METS/ALTO viewers, Transkribus and eScriptorium read ALTO beside the scan (`NAME.EXT.alto.xml`), so tuwen
writes ALTO v4 from the same `ocr_pages` dicts the sidecar keeps (`OcrPage.to_dict()`): one `Page` per
image, one `TextBlock` per block in reading order, one `TextLine` per printed line (row, or column for
vertical text), and a `String` per word (per box for Chinese, which has no spaces), with `SP` between.

Choices that matter to importers:
- Coordinates are pixels of the image as stored (`MeasurementUnit` pixel), the frame the boxes are in, so a
  viewer overlays the text on the file beside it even when the scan is turned. A turned page gets the
  page-level `ROTATION` of ALTO 4.4 (counter-clockwise degrees of its text, which equals `rotation`, the
  clockwise turn that makes it upright).
- Vertical text gets `BASEDIRECTION="ttb"` (ALTO 4.3+) on its blocks and lines; word positions in a
  column run down the column.
- `WC` is the line's confidence (RapidOCR scores lines, not words); `PC` on the page is the mean.
- Document order is reading order, so no `ReadingOrder` element is needed.
The schema version written is 4.4 (namespace ns-v4); its XSD is not fetched here, so the tests check the
structure and coordinates by parsing.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

ALTO_NS = "http://www.loc.gov/standards/alto/ns-v4#"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = f"{ALTO_NS} http://www.loc.gov/standards/alto/v4/alto-4-4.xsd"
# Characters XML 1.0 cannot carry; OCR of a damaged scan can in principle produce them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
Extent = tuple[float, float, float, float]


def _unit(value: Any) -> str:
    """A confidence for WC/PC: a float in [0, 1]."""
    return f"{min(max(float(value), 0.0), 1.0):.4f}"


def _clean(text: object) -> str:
    return _NOT_XML.sub("", str(text))


def _num(value: float) -> str:
    return str(round(value, 1)).removesuffix(".0")


def _extent(boxes: Sequence[Sequence[Sequence[float]]]) -> Extent:
    xs = [float(p[0]) for box in boxes for p in box]
    ys = [float(p[1]) for box in boxes for p in box]
    return min(xs), min(ys), max(xs), max(ys)


def _position(element: ET.Element, extent: Extent) -> None:
    x0, y0, x1, y1 = extent
    element.set("HPOS", _num(x0))
    element.set("VPOS", _num(y0))
    element.set("WIDTH", _num(x1 - x0))
    element.set("HEIGHT", _num(y1 - y0))


def _words(text: str, extent: Extent, vertical: bool) -> Iterator[tuple[str, Extent]]:
    """Split a box's text at spaces; each word gets the share of the box its characters take."""
    x0, y0, x1, y1 = extent
    total = max(len(text), 1)
    length = (y1 - y0) if vertical else (x1 - x0)
    for match in re.finditer(r"\S+", text):
        start = length * match.start() / total
        end = length * match.end() / total
        if vertical:
            yield match.group(), (x0, y0 + start, x1, y0 + end)
        else:
            yield match.group(), (x0 + start, y0, x0 + end, y1)


def _page(layout: ET.Element, page: Mapping[str, Any], number: int, size: tuple[int, int]) -> None:
    width, height = size
    lines = list(page.get("lines") or [])
    element = ET.SubElement(
        layout, "Page", ID=f"P{number}", PHYSICAL_IMG_NR=str(number), WIDTH=str(width), HEIGHT=str(height)
    )
    if lines:
        mean = sum(float(line["confidence"]) for line in lines) / len(lines)
        element.set("PC", _unit(mean))
    rotation = int(page.get("rotation") or 0) % 360
    if rotation:
        element.set("ROTATION", str(rotation))
    space = ET.SubElement(element, "PrintSpace", HPOS="0", VPOS="0", WIDTH=str(width), HEIGHT=str(height))

    blocks: dict[int, dict[int, list[Mapping[str, Any]]]] = {}
    for line in lines:  # dicts keep insertion order, and the lines come in reading order
        blocks.setdefault(int(line.get("block", 0)), {}).setdefault(int(line.get("row", 0)), []).append(line)
    string_number = 0
    for block_number, rows in enumerate(blocks.values(), start=1):
        block_lines = [line for row in rows.values() for line in row]
        vertical = all(line.get("direction") in ("ttb", "btt") for line in block_lines)
        block = ET.SubElement(space, "TextBlock", ID=f"P{number}_B{block_number}")
        _position(block, _extent([line["box"] for line in block_lines]))
        if vertical:
            block.set("BASEDIRECTION", "ttb")
        for row_number, row in enumerate(rows.values(), start=1):
            words = [
                (word, extent, f"{min(max(float(line['confidence']), 0.0), 1.0):.4f}")
                for line in row
                for word, extent in _words(
                    _NOT_XML.sub("", str(line["text"])), _extent([line["box"]]), vertical
                )
            ]
            if not words:  # a TextLine needs at least one String
                continue
            text_line = ET.SubElement(block, "TextLine", ID=f"P{number}_B{block_number}_L{row_number}")
            _position(text_line, _extent([line["box"] for line in row]))
            if vertical:
                text_line.set("BASEDIRECTION", "ttb")
            for position, (word, extent, confidence) in enumerate(words):
                if position:
                    ET.SubElement(text_line, "SP")
                string_number += 1
                string = ET.SubElement(text_line, "String", ID=f"P{number}_S{string_number}", CONTENT=word)
                _position(string, extent)
                string.set("WC", confidence)


def alto_xml(
    pages: Sequence[Mapping[str, Any]],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    file_name: str = "",
    *,
    software: str = "tuwen",
    software_version: str = "",
) -> bytes:
    """ALTO v4.4 XML (UTF-8 bytes) for `pages`, the `OcrPage.to_dict()` of each image of one file.

    `image_sizes` are (width, height) per page; by default each page's own `width`/`height`. `file_name` is
    the scan's name as it sits beside the ALTO file.
    """
    sizes = (
        list(image_sizes) if image_sizes is not None else [(int(p["width"]), int(p["height"])) for p in pages]
    )
    if len(sizes) != len(pages):
        raise ValueError(f"{len(pages)} pages but {len(sizes)} image sizes")
    ET.register_namespace("", ALTO_NS)
    ET.register_namespace("xsi", XSI_NS)
    root = ET.Element("alto", {"SCHEMAVERSION": "4.4", f"{{{XSI_NS}}}schemaLocation": SCHEMA_LOCATION})
    description = ET.SubElement(root, "Description")
    ET.SubElement(description, "MeasurementUnit").text = "pixel"
    if file_name:
        ET.SubElement(ET.SubElement(description, "sourceImageInformation"), "fileName").text = file_name
    processing = ET.SubElement(description, "Processing", ID="OCR_1")
    ET.SubElement(processing, "processingCategory").text = "contentGeneration"
    tool = ET.SubElement(processing, "processingSoftware")
    ET.SubElement(tool, "softwareName").text = software
    if software_version:
        ET.SubElement(tool, "softwareVersion").text = software_version
    layout = ET.SubElement(root, "Layout")
    for number, (page, size) in enumerate(zip(pages, sizes, strict=True), start=1):
        _page(layout, page, number, size)
    _qualify(root)
    ET.indent(root, space=" ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _qualify(element: ET.Element) -> None:
    """Put every element in the ALTO namespace (built unqualified above for readability)."""
    for node in element.iter():
        if not node.tag.startswith("{"):
            node.tag = f"{{{ALTO_NS}}}{node.tag}"
