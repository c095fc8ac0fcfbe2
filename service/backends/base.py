"""The small interface every model backend implements.

A backend is owned by exactly one `ModelWorker` thread, so implementations need not be thread-safe. They
receive decoded, already size-capped PIL images; file handling happens in `service.images`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from service.events import GenerationOptions


@dataclass(frozen=True)
class Turn:
    """One message of a conversation. Images belong to user turns."""

    role: str  # "user" | "assistant"
    text: str
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class Request:
    """What to answer: the conversation so far, ending with a user turn."""

    turns: tuple[Turn, ...]
    max_new_tokens: int = 512
    temperature: float = 0.0
    job_id: str = "-"  # only for log lines
    # What the caller asked for (an API client's max_tokens), None when it asked for nothing: the OCR
    # backend cuts its text only then, since a scan's full text is the point of reading it.
    requested_max_tokens: int | None = None
    # The rest of what the caller asked (top_p, seed, stop, penalties, thinking); backends use what they can.
    options: GenerationOptions = field(default_factory=GenerationOptions)
    # Text each image of the conversation already carries, in image order (a PDF page's own text layer;
    # None where it has none). The OCR step uses it instead of reading pixels; models see the pixels.
    page_texts: tuple[str | None, ...] = ()


@dataclass
class Answer:
    """A finished answer with usage counts (what OpenAI calls prompt/completion tokens)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None
    # "length" when the answer was cut at the request's `max_new_tokens`, else "stop" (OpenAI's names).
    finish_reason: str = "stop"
    extra: dict[str, object] = field(default_factory=dict)


OnText = Callable[[str], None]


@runtime_checkable
class Backend(Protocol):
    """A model. `name` is the backend kind; `model_id`/`model_version` are recorded with every answer.

    `answer_kind` tells readers what an answer is: "model" (a model read the question and answered it) or
    "ocr" (the text read from the image; the question was not answered). It is recorded with every job
    instead of a banner inside the text, which would end up as the caption in every photo tool and CSV.
    """

    name: str
    model_id: str
    model_version: str
    answer_kind: str

    def load(self) -> None:
        """Load weights and warm up; raise `service.errors.TuwenError` subclasses on failure."""
        ...

    def answer(self, request: Request) -> Answer:
        """Answer one request."""
        ...

    def stream(self, request: Request, on_text: OnText) -> Answer:
        """Answer one request, calling `on_text` with each new piece of text as it is generated."""
        ...

    def batch(self, requests: Sequence[Request]) -> list[Answer]:
        """Answer several requests at once (a folder backlog); same order as `requests`."""
        ...

    def close(self) -> None:
        """Release the model and its memory."""
        ...


def single_image_request(image: Image.Image, question: str, **kwargs: object) -> Request:
    """Build the common one-image, one-question request."""
    return Request(turns=(Turn("user", question, (image,)),), **kwargs)  # type: ignore[arg-type]
