"""The OpenAI-compatible API driven by the OpenAI Python SDK against a real service on 127.0.0.1.

Two backends: the tiny random GLM-4V through transformers (real generation, real token counts) and the
embedded OCR backend (a rendered Chinese scan must come back as text).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from pydantic import SecretStr

from service.config import Config, HttpConfig, ModelConfig, StorageConfig
from service.http.auth import Auth, Scope
from tests.live import LiveService, running_service

MODEL_NAME = "tuwen-test"
MAX_NEW_TOKENS = 8


def png_data_url(colour: str = "red", size: tuple[int, int] = (128, 96)) -> str:
    """A small PNG as a data URL."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user_turn(text: str, *image_urls: str) -> Any:
    """A user message with text and images as OpenAI content parts."""
    parts: list[dict[str, object]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"role": "user", "content": parts}


def job_of(live: LiveService, completion_id: str):  # type: ignore[no-untyped-def]
    """The history row behind an API answer."""
    assert completion_id.startswith("chatcmpl-")
    job = live.app.store.get_by_uid(completion_id.removeprefix("chatcmpl-"))
    assert job is not None
    return job


@pytest.fixture(scope="module")
def glm(tiny_glm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """A service answering with the tiny GLM-4V (transformers backend)."""
    root = tmp_path_factory.mktemp("api-glm")
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False, model_name=MODEL_NAME),
        model=ModelConfig(backend="transformers", path=str(tiny_glm_dir), max_new_tokens=MAX_NEW_TOKENS),
    )
    with running_service(config) as live:
        assert live.app.worker.alive
        yield live


@pytest.fixture
def client(glm: LiveService) -> openai.OpenAI:
    """The OpenAI SDK pointed at the service (no key configured, so any key is accepted)."""
    return openai.OpenAI(base_url=glm.base_url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_completion_has_openai_shape_and_is_recorded(glm: LiveService, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="whatever-the-client-calls-it",
        messages=[
            {"role": "system", "content": "You are a helpful archivist."},
            user_turn("图里是什么颜色？", png_data_url("red")),
        ],
        extra_body={"knowledge_base_id": "kb-42"},
    )
    job = job_of(glm, completion.id)
    usage = completion.usage
    assert usage is not None
    assert completion.object == "chat.completion" and completion.model == MODEL_NAME
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == job.answer
    assert usage.prompt_tokens == job.prompt_tokens and usage.completion_tokens == job.completion_tokens
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_NEW_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = completion.model_extra or {}
    assert extra["model_version"] == glm.app.worker.backend.model_version  # type: ignore[union-attr]
    assert usage.model_extra == {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }
    expected_finish = "length" if usage.completion_tokens >= MAX_NEW_TOKENS else "stop"
    assert completion.choices[0].finish_reason == expected_finish
    assert (job.source, job.status, job.question, job.history) == ("api", "done", "图里是什么颜色？", [])
    assert job.extra["knowledge_base_id"] == "kb-42"
    assert job.extra["client_model"] == "whatever-the-client-calls-it"
    assert len(job.images) == 1 and Path(job.images[0]).is_file()


def test_streamed_deltas_join_to_the_recorded_answer(glm: LiveService, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[user_turn("描述这张图片", png_data_url("blue"))],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    job = job_of(glm, chunks[0].id)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL_NAME for c in chunks)
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == job.answer
    assert [c.choices[0].finish_reason for c in content_chunks][-1] in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (job.prompt_tokens, job.completion_tokens)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_follow_up_sends_the_earlier_turns(glm: LiveService, client: openai.OpenAI) -> None:
    image = png_data_url("green")
    first = client.chat.completions.create(model=MODEL_NAME, messages=[user_turn("这是什么？", image)])
    answer = first.choices[0].message.content or ""
    follow_up = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[
            user_turn("这是什么？", image),
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "它是什么年代的？"},
        ],
        extra_headers={"X-Tuwen-Conversation": "conv-1"},
    )
    earlier, job = job_of(glm, first.id), job_of(glm, follow_up.id)
    assert job.question == "它是什么年代的？"
    assert job.history == [{"role": "user", "text": "这是什么？"}, {"role": "assistant", "text": answer}]
    assert job.images == earlier.images  # the image resent with the history is the same stored upload
    assert job.conversation_id == "conv-1"
    assert (job.prompt_tokens or 0) > (earlier.prompt_tokens or 0)  # the history went into the prompt


def test_max_tokens_and_temperature_reach_the_job(glm: LiveService, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[user_turn("图里有什么？", png_data_url("white"))],
        max_completion_tokens=3,
        temperature=0.7,
    )
    job = job_of(glm, completion.id)
    usage = completion.usage
    assert usage is not None and usage.completion_tokens <= 3
    assert (job.options["max_tokens"], job.options["temperature"]) == (3, 0.7)
    expected_finish = "length" if usage.completion_tokens == 3 else "stop"
    assert completion.choices[0].finish_reason == expected_finish


def test_models_lists_the_configured_name(glm: LiveService, client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    extra = models[0].model_extra or {}
    assert models[0].owned_by == "tuwen" and extra["backend"] == "transformers"
    assert extra["model_version"] == glm.app.worker.backend.model_version  # type: ignore[union-attr]


def test_identical_uploads_share_one_content_addressed_file(glm: LiveService, client: openai.OpenAI) -> None:
    image = png_data_url("purple", (90, 90))
    ids = [
        client.chat.completions.create(model=MODEL_NAME, messages=[user_turn(q, image)]).id
        for q in ("一", "二")
    ]
    paths = {job_of(glm, i).images[0] for i in ids}
    payload = base64.b64decode(image.split(",", 1)[1])
    (path,) = paths
    sha = hashlib.sha256(payload).hexdigest()
    assert Path(path) == glm.app.config.storage.data_dir / "uploads" / sha[:2] / f"{sha}.png"
    assert Path(path).read_bytes() == payload
    assert not list(Path(path).parent.glob("*.tmp"))


# --- the OCR backend: sources, credentials and a real scan --------------------------------------------


@pytest.fixture
def ocr(make_config, backend_factory) -> Iterator[LiveService]:  # type: ignore[no-untyped-def]
    """A service with the embedded OCR backend and an API key."""
    config = make_config(http={"api_key": SecretStr("s3cret"), "model_name": MODEL_NAME})
    with running_service(config, backend_factory) as live:
        yield live


def test_ocr_reads_a_chinese_scan_streaming_and_not(ocr: LiveService, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    scan = "data:image/jpeg;base64," + base64.b64encode(scan_bytes(["图问档案馆", "一九五六年"])).decode()
    client = openai.OpenAI(base_url=ocr.base_url + "/v1", api_key="s3cret", max_retries=0, timeout=60)
    messages = [user_turn("上面写了什么？", scan)]
    plain = client.chat.completions.create(model=MODEL_NAME, messages=messages)
    streamed = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert "图问档案馆" in (plain.choices[0].message.content or "") and "一九五六年" in text
    assert text == job_of(ocr, streamed[0].id).answer
    assert plain.choices[0].finish_reason == "stop"
    # No banner in the text; what kind of answer it is travels beside it.
    assert (plain.model_extra or {})["answer_kind"] == "ocr"
    (final,) = [c for c in streamed if c.choices and c.choices[0].finish_reason]
    assert (final.model_extra or {})["answer_kind"] == "ocr"
    limited = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=4)
    assert limited.choices[0].finish_reason == "length"
    assert limited.choices[0].message.content == (plain.choices[0].message.content or "")[:4]
    assert limited.usage is not None and limited.usage.completion_tokens == 4


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, "api"), ("web", "web"), ("KIOSK", "kiosk"), ("telegram", "api")],
)
def test_source_label_comes_from_the_header(ocr: LiveService, header: str | None, expected: str) -> None:
    headers = {"Authorization": "Bearer s3cret"} | ({"X-Tuwen-Source": header} if header else {})
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "你好"}]}
    response = httpx.post(ocr.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200
    assert job_of(ocr, response.json()["id"]).source == expected


def test_kiosk_credential_only_creates_kiosk_jobs(ocr: LiveService) -> None:
    token = Auth("s3cret").token(Scope.KIOSK)
    headers = {"Authorization": f"Bearer {token}", "X-Tuwen-Source": "web"}
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "你好"}]}
    response = httpx.post(ocr.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    models = httpx.get(ocr.base_url + "/v1/models", headers=headers, timeout=30)
    assert response.status_code == 200 and job_of(ocr, response.json()["id"]).source == "kiosk"
    assert models.status_code == 401


def test_a_stream_dropped_by_the_client_still_finishes_into_the_history(ocr: LiveService) -> None:
    ocr.app.worker.backend.delay = 0.5  # type: ignore[union-attr]
    headers = {"Authorization": "Bearer s3cret"}
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "你好"}], "stream": True}
    with httpx.stream("POST", ocr.base_url + "/v1/chat/completions", json=body, headers=headers) as response:
        first = next(response.iter_lines())  # the role chunk, sent before the answer exists
    uid = json.loads(first.removeprefix("data: "))["id"].removeprefix("chatcmpl-")
    finished = ocr.app.queue.result(uid).result(timeout=30)
    after = httpx.post(ocr.base_url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers)
    assert finished.status == "done" and ocr.app.worker.alive
    assert after.status_code == 200
