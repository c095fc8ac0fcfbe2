"""From a claimed job row to what a backend needs: decoded pages and the requests to answer.

Kept apart from the worker so the step a hostile file reaches first (decoding) is small and testable on its
own: everything here is pure apart from reading the job's image files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from db.models import Job
from service.backends.base import Answer, Request, Turn
from service.config import Config
from service.events import GenerationOptions
from service.images import DecodedImage, decode_image
from service.messages import msg


@dataclass
class Work:
    """A claimed job with its decoded images, the requests it needs answered, and (later) the answers."""

    job: Job
    images: list[DecodedImage]
    requests: list[Request]
    answers: list[Answer] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


def prepare(job: Job, config: Config) -> Work:
    """Decode the job's images and build its requests; `PermanentError` for a file that cannot be used."""
    short = job.uid[:8]
    images = [decode_image(Path(path), config.images, short) for path in job.images]
    options = job_options(job)
    if options.thinking is None:  # neither the caller nor its watch chose: the config's default
        options = replace(options, thinking=config.model.thinking)
    budget = config.model.max_new_tokens
    # A caller (the API) may ask for a shorter answer or more variety than the config's default, never
    # for more tokens than the config allows.
    max_new = min(options.max_tokens or budget, budget)
    temperature = config.model.temperature if options.temperature is None else options.temperature

    def request(turns: tuple[Turn, ...], texts: tuple[str | None, ...]) -> Request:
        return Request(
            turns=turns,
            max_new_tokens=max_new,
            temperature=temperature,
            job_id=short,
            requested_max_tokens=options.max_tokens,
            options=options,
            page_texts=texts,
        )

    if len(images) == 1 and len(images[0].pages) > 1 and not job.history:
        # A multi-page TIFF: every page gets the question, and the answers are put together.
        only = images[0]
        requests = [
            request((Turn("user", job.question, (page,)),), (text,))
            for page, text in zip(only.pages, only.text_layer, strict=True)
        ]
    else:
        pages = tuple(page for image in images for page in image.pages)
        texts = tuple(text for image in images for text in image.text_layer)
        requests = [request(conversation(job, pages), texts)]
    return Work(job=job, images=images, requests=requests)


def job_options(job: Job) -> GenerationOptions:
    """What the job's caller asked of the generation (rows from before `options` kept them in `extra`)."""
    if job.options:
        return GenerationOptions.from_dict(job.options)
    extra = job.extra or {}
    legacy: dict[str, object] = {k: extra[k] for k in ("max_tokens", "temperature") if k in extra}
    return GenerationOptions.from_dict(legacy)


def conversation(job: Job, pages: tuple[object, ...]) -> tuple[Turn, ...]:
    """Earlier turns first (the images belong to the first user turn), then the new question."""
    turns: list[Turn] = []
    for index, turn in enumerate(job.history):
        images = pages if index == 0 and turn.get("role") == "user" else ()
        turns.append(Turn(turn["role"], turn["text"], images))  # type: ignore[arg-type]
    if not turns:
        return (Turn("user", job.question, pages),)  # type: ignore[arg-type]
    turns.append(Turn("user", job.question))
    return tuple(turns)


def join_pages(texts: list[str]) -> str:
    """One text for several pages, each under its page label (a single page is returned as it is)."""
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(f"[{msg('page_label', n=i)}]\n{t}" for i, t in enumerate(texts, start=1))
