"""RapidOCR's pipeline run step by step, so each box keeps what its direction classifier decided.

`RapidOCR.__call__` returns boxes, texts and scores but drops the direction classifier's verdicts, and those
say which way each line runs (see `service.backends.ocr_layout`). `recognise()` therefore runs the same
steps `__call__` runs (load, resize, detect + crop, classify, recognise, map boxes back, drop empty texts
and scores under `Global.text_score`) and keeps the verdicts. The steps are RapidOCR 3.x internals, so if
they are missing (another major version) it falls back to the public call, with no verdicts: every line then
counts as upright, which is what the old reader assumed.

`probe_vertical()` asks the recogniser which way is up inside a line. The recogniser reads the glyphs of a
crop upright or turned 90° counter-clockwise (that is how RapidOCR feeds it a vertical column), but not turned
clockwise or upside down. Cutting a line into one cell per character and turning each cell clockwise makes a
column of upright glyphs (vertical script) legible and a turned horizontal line (a rotated scan) illegible.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from service.backends.ocr_layout import Direction, TextBox, as_quad, box_direction

logger = logging.getLogger("tuwen.vision")

# A probe line: at least this many characters, all Han (a Latin word in a column is rare, and cutting it
# into square cells would not make sense), and at most PROBE_CHARS of them are used.
PROBE_MIN_CHARS = 3
PROBE_CHARS = 10
PROBE_LINES = 2
# The probe's reading must match the line this closely for the cells to count as upright glyphs. Measured:
# 1.0 on every column of the benchmark's six vertical 繁体 pages at 0°, 90° and 180°; 0.0–0.33 on lines of a
# horizontal Chinese page turned 90°, 180° and 270°.
PROBE_MATCH = 0.6
_HAN = re.compile(r"^[\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff01-\uff5e]+$")


@dataclass
class RawRead:
    """The kept lines of one read (directions in the frame of the image read), and what was dropped."""

    boxes: list[TextBox] = field(default_factory=list)
    strips: list[Any] = field(default_factory=list)  # the crop each line was recognised from (BGR array)
    detected: int = 0  # boxes the detector found
    dropped: list[TextBox] = field(default_factory=list)  # read under RapidOCR's `text_score` floor

    @property
    def weight(self) -> float:
        """Characters read, weighted by confidence: what a second read at another rotation must beat."""
        return sum(b.confidence * len(b.text) for b in self.boxes)


_fallback_logged = False


def recognise(engine: Any, image: Image.Image) -> RawRead:
    """Run RapidOCR on `image`, keeping each kept line's direction (see the module docstring)."""
    try:
        from rapidocr.utils.process_img import map_boxes_to_original

        original = engine.load_img(image)
        resized, op_record = engine.preprocess_img(original)
        det, cls, rec, _crops = engine.run_ocr_steps(resized, op_record)
    except (AttributeError, ImportError, TypeError) as exc:
        return _public_call(engine, image, exc)
    read = RawRead()
    if det.boxes is None or rec.txts is None:
        return read
    height, width = original.shape[:2]
    boxes = map_boxes_to_original(det.boxes, op_record, height, width)
    verdicts = cls.cls_res or [("0", 0.0)] * len(boxes)
    strips = cls.img_list or [None] * len(boxes)
    threshold = float(engine.cfg.Cls.cls_thresh)
    read.detected = len(boxes)
    for box, text, score, (label, label_score), strip in zip(
        boxes.tolist(), rec.txts, rec.scores, verdicts, strips, strict=False
    ):
        if not text.strip():
            continue
        quad = as_quad(box)
        flipped = "180" in str(label) and float(label_score) > threshold  # what RapidOCR itself turned
        line = TextBox(text, quad, float(score), box_direction(quad, flipped))
        if score < engine.text_score:
            read.dropped.append(line)
            continue
        read.boxes.append(line)
        read.strips.append(strip)
    return read


def _public_call(engine: Any, image: Image.Image, exc: BaseException) -> RawRead:
    global _fallback_logged
    if not _fallback_logged:
        logger.warning("RapidOCR internals unavailable (%s); reading without direction verdicts", exc)
        _fallback_logged = True
    result = engine(image)
    read = RawRead()
    if result.boxes is None or not result.txts:
        return read
    for box, text, score in zip(result.boxes.tolist(), result.txts, result.scores, strict=True):
        quad = as_quad(box)
        read.boxes.append(TextBox(text, quad, float(score), box_direction(quad, False)))
        read.strips.append(None)
    read.detected = len(read.boxes)
    return read


def _probe_strip(strip: Any, characters: int) -> Any:
    """The first `characters` cells of a recognition crop, each turned 90° clockwise, side by side."""
    width = strip.shape[1]
    step = width / characters
    count = min(characters, PROBE_CHARS)
    cells = [np.rot90(strip[:, round(i * step) : round((i + 1) * step)], k=-1) for i in range(count)]
    height = max(cell.shape[0] for cell in cells)
    padded = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0)), mode="edge") for c in cells]
    return np.ascontiguousarray(np.concatenate(padded, axis=1))


def probe_vertical(engine: Any, read: RawRead, dominant: Direction) -> bool | None:
    """Whether the lines running `dominant` are vertical script (None when no line can be probed)."""
    candidates = [
        (box, strip)
        for box, strip in zip(read.boxes, read.strips, strict=True)
        if box.direction == dominant
        and strip is not None
        and getattr(strip, "ndim", 0) == 3
        and len(box.text) >= PROBE_MIN_CHARS
        and _HAN.match(box.text)
    ]
    if not candidates:
        return None
    candidates.sort(key=lambda c: -c[0].confidence)
    chosen = candidates[:PROBE_LINES]
    try:
        from rapidocr.ch_ppocr_rec import TextRecInput

        recogniser = engine._load_rec_model() if hasattr(engine, "_load_rec_model") else engine.text_rec
        strips = [_probe_strip(strip, len(box.text)) for box, strip in chosen]
        result = recogniser(TextRecInput(img=strips))
    except Exception as exc:  # an internal API that moved: leave the script undecided
        logger.warning("OCR script probe failed: %s", exc)
        return None
    votes = [
        difflib.SequenceMatcher(None, box.text[:PROBE_CHARS], text).ratio() >= PROBE_MATCH
        for (box, _), text in zip(chosen, result.txts, strict=True)
    ]
    return sum(votes) * 2 > len(votes)
