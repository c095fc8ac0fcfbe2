"""What a job's OCR step produced, whichever way it ran, and the notes it leaves on the record.

Two ways: the `ocr` backend's answers already carry their pages (`Answer.extra["ocr_pages"]`); with a model
backend and `[model] ocr_step`, the embedded reader reads each page beside the model. Either way a PDF page
with its own text layer keeps that text (exact characters; OCR could only lose some) and the record says
so. The outcome is stored on the job (`ocr_text`, `ocr_lines` = one `OcrPage.to_dict()` per page,
`needs_review`, `rotation`) so sidecars, ALTO files and the review page are written from the database alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.images import dropped_pages_note, page_ranges
from service.messages import Message, msg
from service.work import Work, join_pages

if TYPE_CHECKING:
    from service.backends.ocr_backend import OcrEngine

# The notes this step writes; a job answered again (a new prompt, a re-run) replaces them, never doubles them.
STEP_NOTES = frozenset({"pages_dropped", "ocr_pdf_text_layer", "ocr_rotated", "ocr_needs_review"})


@dataclass
class OcrOutcome:
    """The text and the structured pages of one job's reading (empty when no OCR ran)."""

    text: str | None = None
    pages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def needs_review(self) -> bool:
        """Whether any page has lines read with low confidence (or lines the reader dropped)."""
        return any(bool(page.get("needs_review")) for page in self.pages)

    @property
    def rotation(self) -> int | None:
        """The first page's rotation (clockwise degrees that make it upright); None without OCR pages."""
        return int(self.pages[0].get("rotation") or 0) if self.pages else None

    def columns(self) -> dict[str, Any]:
        """The job columns this outcome fills."""
        return {
            "ocr_text": self.text,
            "ocr_lines": self.pages or None,
            "needs_review": int(self.needs_review),
            "rotation": self.rotation,
        }


def from_answers(work: Work) -> OcrOutcome:
    """The `ocr` backend's own reading, from its answers."""
    text = join_pages([str(answer.extra.get("ocr_text", "")) for answer in work.answers])
    pages: list[dict[str, Any]] = []
    for answer in work.answers:
        found = answer.extra.get("ocr_pages")
        pages += found if isinstance(found, list) else []
    return OcrOutcome(text, pages)


def read_beside(engine: OcrEngine, work: Work, review_confidence: float) -> OcrOutcome:
    """The embedded reader beside a model (`[model] ocr_step`): a text layer where a page has one."""
    from service.backends.ocr_page import text_layer_page

    pages = []
    for image in work.images:
        for page, known in zip(image.pages, image.text_layer, strict=True):
            read = text_layer_page(known, *page.size) if known else engine.read_page(page, review_confidence)
            pages.append(read)
    return OcrOutcome(join_pages([page.text for page in pages]), [page.to_dict() for page in pages])


def step_notes(work: Work, outcome: OcrOutcome) -> list[Message]:
    """What a reader of the record should know: pages left out, text layers used, rotation, low confidence."""
    notes = [note for image in work.images if (note := dropped_pages_note(image)) is not None]
    layered = [n for n, page in enumerate(outcome.pages, 1) if page.get("source") == "text_layer"]
    if layered:
        notes.append(msg("ocr_pdf_text_layer", pages=page_ranges(layered)))
    turned = sorted({int(page.get("rotation") or 0) for page in outcome.pages} - {0})
    notes += [msg("ocr_rotated", degrees=degrees) for degrees in turned]
    if outcome.needs_review:
        notes.append(msg("ocr_needs_review"))
    return notes


def merged_notes(earlier: list[dict[str, Any]] | None, notes: list[Message]) -> list[dict[str, Any]] | None:
    """The job's notes with this step's replaced by `notes` (the intake's, such as a shortened name, stay)."""
    kept = [note for note in earlier or () if note.get("code") not in STEP_NOTES]
    kept += [{"code": note.code, "params": note.json_params()} for note in notes]
    return kept or None
