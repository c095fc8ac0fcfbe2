"""A burst of concurrent clients against a small queue and a slowed backend: only 200s and 429s, memory flat.

The service runs in this process (uvicorn in a thread), so this process's VmRSS is the service's memory.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service.backends.base import Answer, Request
from tests.live import LiveService, running_service

CLIENTS = 30
REQUESTS_PER_CLIENT = 2
ROUNDS = 5
MAX_QUEUE = 3
RSS_GROWTH_LIMIT_MB = 150


def rss_mb() -> float:
    """This process's resident memory, from /proc (no psutil needed)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def _client(base_url: str, body: dict[str, Any], index: int) -> list[tuple[int, str]]:
    """One client sending its requests one after another; odd clients stream. Returns (status, id)."""
    results = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for _ in range(REQUESTS_PER_CLIENT):
            payload = {**body, "stream": index % 2 == 1}
            async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
                text = (await response.aread()).decode()
            results.append((response.status_code, text))
    return results


async def _burst(base_url: str, body: dict[str, Any]) -> list[tuple[int, str]]:
    per_client = await asyncio.gather(*(_client(base_url, body, i) for i in range(CLIENTS)))
    return [result for results in per_client for result in results]


class _Instant:
    """Stands in for RapidOCR behind the instrumented backend: on a shared 2-core box OCR takes ~1 s even
    for a blank page, and this test is about the HTTP layer, so the backend's time is the injected delay."""

    model_version = "instant"

    def answer(self, request: Request) -> Answer:
        return Answer("一张白纸", prompt_tokens=3, completion_tokens=4)

    def stream(self, request: Request, on_text: Callable[[str], None]) -> Answer:
        on_text("一张")
        on_text("白纸")
        return self.answer(request)


@pytest.fixture
def live(make_config, backend_factory) -> Iterator[LiveService]:  # type: ignore[no-untyped-def]
    def slowed(backend: Any) -> None:
        backend.inner, backend.delay = _Instant(), 0.15

    backend_factory.prepare = slowed
    with running_service(make_config(http={"max_queue": MAX_QUEUE}), backend_factory) as running:
        yield running


def test_a_burst_gets_only_200_and_429_and_memory_stays_flat(live: LiveService) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), "white").save(buffer, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    parts = [{"type": "text", "text": "写了什么？"}, {"type": "image_url", "image_url": {"url": image}}]
    body = {"model": "tuwen", "messages": [{"role": "user", "content": parts}]}
    warm_up = asyncio.run(_burst(live.base_url, body))  # imports, connection paths, allocator pools
    gc.collect()
    before = rss_mb()
    started = time.monotonic()
    results = [result for _ in range(ROUNDS) for result in asyncio.run(_burst(live.base_url, body))]
    elapsed = time.monotonic() - started
    gc.collect()
    after = rss_mb()

    statuses = [status for status, _ in results]
    ok = [text for status, text in results if status == 200]
    api_jobs = live.app.store.list_jobs(source="api", limit=10_000)
    assert set(statuses) == {200, 429}, sorted(set(statuses))
    assert len(statuses) == ROUNDS * CLIENTS * REQUESTS_PER_CLIENT
    assert all(text.endswith("data: [DONE]\n\n") or '"chat.completion"' in text for text in ok)
    assert len(api_jobs) == len(ok) + sum(status == 200 for status, _ in warm_up)  # a 429 queues nothing
    assert live.app.queue.interactive_waiting() == 0
    assert {job.status for job in api_jobs} == {"done"}
    assert after - before < RSS_GROWTH_LIMIT_MB, (before, after)
    assert elapsed < 60
