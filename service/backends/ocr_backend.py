"""The embedded default backend: text recognition only, with RapidOCR's bundled PP-OCRv6 models.

It exists so that a fresh install does something useful with no GPU and no download: scans of letters,
certificates and photo captions come back as text. It is honest about what it is without padding the answer:
the text it returns is exactly what it read (a caption tool, a CSV and a chat get the same words), and every
job records `answer_kind = "ocr"`, which the pages show as a small 「仅文字识别」 badge and the API and
sidecars carry as a field. A photo with no text gets one plain sentence saying so.

RapidOCR 3.x ships its small PP-OCRv6 detection/recognition models and a direction classifier inside the
wheel, and its default configuration uses exactly these, so nothing is fetched at run time. It needs
onnxruntime installed beside it.

Reading (`OcrEngine.read_page` → `OcrPage`, see `ocr_page`): RapidOCR reads each line right in any
orientation but returns no usable order, so the order is rebuilt from the boxes (`ocr_layout`): vertical
columns right to left, horizontal lines top to bottom, each block of a mixed page in turn, tables as rows of
cells (`ocr_tables`; tab-separated in `text`, Markdown in `markdown`, which is the answer for a table page).
A page found turned is read a second time turned upright only when the first read was not clean (see
`RETRY_MIN_LINES`); an upright horizontal page is read once, with no probe and no second read. Every line
keeps its box (in the image as given) and confidence, and low-confidence or dropped lines mark the page
`needs_review`. `Answer.extra["ocr_pages"]` carries `OcrPage.to_dict()` per image for sidecars, ALTO
(`service.sidecars.alto`) and the review page.

Usage counts: there is no prompt, so `prompt_tokens` is 0; `completion_tokens` is the number of *characters*
of the answer text, since OCR has no tokens and characters are the closest honest measure. A request's
`max_tokens` (an API client's, `Request.requested_max_tokens`) is honoured the same way: the text is cut at
that many characters and the answer says `finish_reason = "length"`. `[model] max_new_tokens` is a budget for
generating models and does not cut a scan's text.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from service.backends.base import Answer, OnText, Request
from service.backends.ocr_layout import (
    TextBox,
    dominant_direction,
    layout_page,
    page_markdown,
    page_rotation,
    page_text,
    rotate_direction,
    rotate_quad,
)
from service.backends.ocr_page import REVIEW_CONFIDENCE, OcrLine, OcrPage, needs_review, text_layer_page
from service.backends.ocr_rapid import RawRead, probe_vertical, recognise
from service.errors import PermanentError
from service.messages import msg

if TYPE_CHECKING:
    from service.config import Config

logger = logging.getLogger("tuwen.vision")

# Two boxes belong to one printed line when they share at least this fraction of the smaller box's height;
# half a line tolerates slightly skewed scans without merging neighbouring lines, whose spacing is >1 line.
LINE_OVERLAP = 0.5

# A page found turned (rotation ≠ 0) is read a second time turned upright unless the first read was clean:
# at least RETRY_MIN_LINES lines, none dropped under RapidOCR's score floor, none under the review threshold,
# and none too square to have a direction. Square boxes (a table's "92", a single character) are the reason:
# RapidOCR turns only crops that are clearly taller than wide, so on a sideways page a short cell reaches
# the recogniser on its side and comes back wrong ("76" for "92", measured). An upright page never pays.
RETRY_MIN_LINES = 4
# The upright read replaces the first unless it weighs (characters × confidence) under this share of it: on
# 18 turned pages the upright read weighed 0.997–1.55× the first, and where the two were within 1 % the
# first read's extra weight was misread characters ("王王" for "王五", a stray "：").
UPRIGHT_SHARE = 0.95


def _rapidocr_version() -> str:
    try:
        return importlib.metadata.version("rapidocr")
    except importlib.metadata.PackageNotFoundError:  # optional until this backend is configured
        return "unknown"


def _model_name(section: Any) -> str:
    """The bundled model file's name for one RapidOCR config section (Det, Rec or Cls)."""
    try:
        # RapidOCR's own resolver knows the file it will load; the config alone names the classifier
        # PP-OCRv4 although the file is ch_ppocr_mobile_v2.0.
        from rapidocr.inference_engine.base import FileInfo, InferSession

        info = FileInfo(
            engine_type=section.engine_type,
            ocr_version=section.ocr_version,
            task_type=section.task_type,
            lang_type=section.lang_type,
            model_type=section.model_type,
        )
        return Path(str(InferSession.get_model_url(info)["model_dir"])).stem
    except Exception:  # internal API: fall back to the configured names rather than fail
        return f"{section.ocr_version.value}_{section.task_type.value}_{section.model_type.value}"


def _to_ocr_input(image: Image.Image) -> Image.Image:
    # RapidOCR understands 1/L/LA/RGB/RGBA arrays; palette, CMYK and 16-bit images would reach it as
    # index or 4-channel data and be misread, so normalise them here. Alpha is kept: RapidOCR picks a
    # contrasting background itself.
    if image.mode in ("1", "L", "LA", "RGB", "RGBA"):
        return image
    if (image.mode == "P" and "transparency" in image.info) or image.mode == "PA":
        return image.convert("RGBA")
    return image.convert("RGB")


def order_lines(boxes: Sequence[Sequence[Sequence[float]]], texts: Sequence[str]) -> list[str]:
    """Group OCR boxes into printed lines, top to bottom, and join each line's boxes left to right.

    `boxes` are four-point polygons (x, y). RapidOCR's own order can interleave boxes of one line with the
    next when a line has a wide gap (a form's "name: … date: …"), so the order is rebuilt from geometry.
    """
    items = []
    for box, text in zip(boxes, texts, strict=True):
        xs = [float(p[0]) for p in box]
        ys = [float(p[1]) for p in box]
        items.append((min(ys), max(ys), min(xs), text))
    items.sort(key=lambda item: (item[0] + item[1]) / 2)

    lines: list[list[tuple[float, float, float, str]]] = []
    for item in items:
        top, bottom = item[0], item[1]
        if lines:
            line = lines[-1]
            line_top = min(i[0] for i in line)
            line_bottom = max(i[1] for i in line)
            overlap = min(bottom, line_bottom) - max(top, line_top)
            smaller = min(bottom - top, line_bottom - line_top)
            if smaller > 0 and overlap >= LINE_OVERLAP * smaller:
                line.append(item)
                continue
        lines.append([item])
    return [" ".join(i[3] for i in sorted(line, key=lambda i: i[2])) for line in lines]


def _warmup_page() -> Image.Image:
    # A page with a little printed text: a blank one would exercise only detection, and the recognition
    # and direction models (loaded lazily by RapidOCR) would still cost the first real job ~1 s.
    page = Image.new("RGB", (240, 64), "white")
    ImageDraw.Draw(page).text((10, 16), "tuwen 2024", fill="black", font=ImageFont.load_default(size=24))
    return page


def _turn(image: Image.Image, degrees: int) -> Image.Image:
    """`image` turned `degrees` clockwise (PIL's transpose names count counter-clockwise)."""
    if degrees == 90:
        return image.transpose(Image.Transpose.ROTATE_270)
    if degrees == 180:
        return image.transpose(Image.Transpose.ROTATE_180)
    if degrees == 270:
        return image.transpose(Image.Transpose.ROTATE_90)
    return image


def _clean(read: RawRead, review_confidence: float) -> bool:
    """Whether a read of a turned page can be trusted as it is (see RETRY_MIN_LINES)."""
    return (
        len(read.boxes) >= RETRY_MIN_LINES
        and not read.dropped
        and all(box.direction is not None and box.confidence >= review_confidence for box in read.boxes)
    )


def _turned_back(boxes: list[TextBox], degrees: int, width: int, height: int) -> list[TextBox]:
    """Boxes read in the image turned `degrees` clockwise, in the frame of the image as given."""
    back = (360 - degrees) % 360
    turned_w, turned_h = (height, width) if degrees in (90, 270) else (width, height)
    return [
        TextBox(
            b.text,
            rotate_quad(b.box, back, turned_w, turned_h),
            b.confidence,
            None if b.direction is None else rotate_direction(b.direction, back),
        )
        for b in boxes
    ]


class OcrEngine:
    """RapidOCR with its bundled models, built lazily once; `read_page()` returns text in reading order."""

    def __init__(self, review_confidence: float = REVIEW_CONFIDENCE) -> None:
        """`review_confidence`: lines under it mark a page `needs_review` (default `REVIEW_CONFIDENCE`)."""
        self.review_confidence = review_confidence
        self._engine: Any = None
        # Lazy construction may race when the transformers backend's OCR step and this backend share an
        # engine; the lock makes "construct once" true. Recognition itself runs on the caller's thread.
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from rapidocr import RapidOCR

                    # RapidOCR logs a warning for every blank page; blank scans are normal input here.
                    self._engine = RapidOCR(params={"Global.log_level": "error"})
        return self._engine

    @property
    def version(self) -> str:
        """`rapidocr X.Y.Z` plus the detection, recognition and direction model names in use."""
        cfg = self._get().cfg
        models = ", ".join(_model_name(section) for section in (cfg.Det, cfg.Rec, cfg.Cls))
        return f"rapidocr {_rapidocr_version()} ({models})"

    def read(self, image: Image.Image) -> str:
        """Return the text of `image` in reading order, one line per row; "" when none is found."""
        return self.read_page(image).text

    def read_page(self, image: Image.Image, review_confidence: float | None = None) -> OcrPage:
        """Read `image`: reading order for horizontal, vertical and mixed pages, tables, rotation, confidence.

        Boxes stay in the coordinates of `image`; `rotation` is how far to turn it clockwise to be upright.
        `review_confidence` overrides the engine's threshold for this page (one engine serves every config).
        """
        threshold = self.review_confidence if review_confidence is None else review_confidence
        engine = self._get()
        source = _to_ocr_input(image)
        width, height = source.size
        read = recognise(engine, source)
        items, dropped = read.boxes, read.dropped
        dominant = dominant_direction(items, threshold)
        vertical = False
        if dominant != "ltr":  # upright horizontal pages never pay for the probe
            vertical = bool(probe_vertical(engine, read, dominant))
        rotation = page_rotation(dominant, vertical)
        reads = 1
        if rotation and not _clean(read, threshold):
            second = recognise(engine, _turn(source, rotation))
            reads = 2
            logger.debug("OCR reread turned %d°: weight %.1f vs %.1f", rotation, second.weight, read.weight)
            if second.weight >= UPRIGHT_SHARE * read.weight:
                items = _turned_back(second.boxes, rotation, width, height)
                dropped = _turned_back(second.dropped, rotation, width, height)
        layout = layout_page(items, width, height, rotation, vertical)
        lines: list[OcrLine] = []
        row_number = 0
        for block_number, block in enumerate(layout.blocks):
            for row in block.rows:
                for position, index in enumerate(row.boxes):
                    item = items[index]
                    cell = row.columns[position] if row.columns is not None else None
                    lines.append(
                        OcrLine(
                            item.text,
                            item.box,
                            item.confidence,
                            item.direction or "",
                            block_number,
                            row_number,
                            cell,
                        )
                    )
                row_number += 1
        ordered = tuple(lines)
        unread = tuple(OcrLine(d.text, d.box, d.confidence, d.direction or "", -1, -1) for d in dropped)
        return OcrPage(
            text=page_text(layout, items),
            markdown=page_markdown(layout, items),
            lines=ordered,
            rotation=rotation,
            needs_review=needs_review(ordered, threshold) or bool(unread),
            width=width,
            height=height,
            tables=layout.tables,
            vertical=vertical,
            reads=reads,
            review_threshold=threshold,
            dropped=unread,
        )

    def close(self) -> None:
        """Drop the ONNX sessions; the next `read()` builds them again."""
        with self._lock:
            self._engine = None


class OcrBackend:
    """The `ocr` backend: reads the text of every image of the conversation; answers no questions."""

    name = "ocr"
    model_id = "rapidocr-ppocrv6"
    answer_kind = "ocr"

    def __init__(self, config: Config, engine: OcrEngine | None = None) -> None:
        """`engine` lets callers share one already-built `OcrEngine` (its sessions take seconds to build)."""
        self.config = config
        self.model_version = _rapidocr_version()
        self._engine: OcrEngine | None = engine

    @property
    def engine(self) -> OcrEngine:
        """The OCR engine (built on first use if `load()` was not called)."""
        if self._engine is None:
            self._engine = OcrEngine(self.config.ocr.review_confidence)
        return self._engine

    def load(self) -> None:
        """Build the engine and run it once on a tiny page so the first job does not pay the start-up."""
        try:
            engine = self.engine
            version = engine.version
            if self.config.model.warmup:
                engine.read(_warmup_page())
        except Exception as exc:  # missing onnxruntime, damaged wheel: nothing a retry would fix
            logger.error("OCR engine failed to load: %s", exc)
            raise PermanentError(msg("model_load_failed", path="rapidocr", reason=exc)) from exc
        logger.info("OCR engine ready: %s", version)

    def _read_all(self, request: Request) -> tuple[str, list[OcrPage]]:
        """The full answer text and the reading of each image of the conversation.

        A follow-up question carries no new image (the photo belongs to the first turn), and OCR can only
        ever answer "what does the photo say", so every image in the conversation is read. A page with a
        table answers with the Markdown form (chat clients and the pages render it); `ocr_text` keeps tabs.
        A PDF page with its own text layer is not read at all: its text is exact, OCR could only lose some.
        """
        images = [image for turn in request.turns if turn.role == "user" for image in turn.images]
        pages: list[OcrPage] = []
        for index, image in enumerate(images, start=1):
            known = request.page_texts[index - 1] if index <= len(request.page_texts) else None
            if known:
                pages.append(text_layer_page(known, image.width, image.height))
                continue
            try:
                page = self.engine.read_page(image, self.config.ocr.review_confidence)
            except Exception as exc:  # an image RapidOCR cannot process fails the same way every time
                logger.error("OCR failed on image %d: %s", index, exc)
                raise PermanentError(msg("model_failed", reason=exc)) from exc
            logger.debug(
                "image %d: %d characters, rotation %d, needs_review %s",
                index,
                len(page.text),
                page.rotation,
                page.needs_review,
            )
            pages.append(page)

        shown = [page.markdown if page.tables else page.text for page in pages]
        if not any(shown):
            return str(msg("ocr_no_text")), pages
        if len(shown) == 1:
            return shown[0], pages
        # Several pages: label each so a reader can tell which text came from where.
        no_text = str(msg("ocr_no_text_page"))
        parts = [f"[{msg('page_label', n=index)}]\n{text or no_text}" for index, text in enumerate(shown, 1)]
        return "\n\n".join(parts), pages

    def answer(self, request: Request) -> Answer:
        """Read the images of the last user turn; the question itself is not answered (see module doc)."""
        text, pages = self._read_all(request)
        texts = [page.text for page in pages]
        logger.info("OCR read %d image(s)", len(texts))
        finish = "stop"
        limit = request.requested_max_tokens
        if limit is not None and len(text) > limit:
            text, finish = text[:limit], "length"
        return Answer(
            text=text,
            prompt_tokens=0,
            completion_tokens=len(text),
            finish_reason=finish,
            extra={
                "ocr_text": "\n\n".join(t for t in texts if t),
                "ocr_texts": texts,
                "ocr_pages": [page.to_dict() for page in pages],
            },
        )

    def stream(self, request: Request, on_text: OnText) -> Answer:
        """Like `answer`, then hand the text to `on_text` one line at a time (pieces join to the text)."""
        result = self.answer(request)
        for line in result.text.splitlines(keepends=True):
            on_text(line)
        return result

    def batch(self, requests: Sequence[Request]) -> list[Answer]:
        """Answer each request in turn: ONNX Runtime already uses every core for one image."""
        return [self.answer(r) for r in requests]

    def close(self) -> None:
        """Release the ONNX sessions."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
