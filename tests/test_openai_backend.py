"""The OpenAI-compatible backend against a real local HTTP server speaking vLLM's dialect."""

from __future__ import annotations

import base64
import io
import logging
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageChops
from pydantic import SecretStr

from bench.fake_openai import MODEL, ROOT, FakeOpenAIServer
from bench.render import render_text_image
from service.backends.base import Backend, Request, Turn, single_image_request
from service.backends.openai_backend import OpenAIBackend
from service.config import Config, OpenAIConfig
from service.errors import PermanentError, TransientError

API_KEY = "sk-test-0123456789-secret"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    fake = FakeOpenAIServer()
    fake.start()
    yield fake
    fake.stop()


def make_backend(base_url: str, **settings: Any) -> OpenAIBackend:
    options: dict[str, Any] = {"api_key": SecretStr(API_KEY), "model": MODEL, "timeout_seconds": 5}
    options |= {"max_retries": 2} | settings
    return OpenAIBackend(Config(openai=OpenAIConfig(base_url=base_url, **options)), backoff_seconds=0.01)


@pytest.fixture
def backend(server: FakeOpenAIServer) -> Iterator[OpenAIBackend]:
    remote = make_backend(server.url)
    yield remote
    remote.close()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def decode_data_url(url: str) -> tuple[str, Image.Image]:
    header, _, data = url.partition(",")
    return header, Image.open(io.BytesIO(base64.b64decode(data)))


def scan() -> Image.Image:
    return render_text_image(["图问档案馆 2024年3月", "Archive scan No. 17"], size=(600, 200))


def test_is_a_backend(backend: OpenAIBackend) -> None:
    assert isinstance(backend, Backend)
    assert (backend.name, backend.model_id, backend.model_version) == ("openai", MODEL, MODEL)


def test_load_checks_models_and_takes_version(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    backend.load()

    assert backend.model_version == ROOT
    assert server.requests[0]["path"] == "/v1/models"
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"


def test_load_with_server_down_is_transient() -> None:
    with pytest.raises(TransientError) as caught:
        make_backend(refused_url()).load()

    assert caught.value.code == "model_remote_down"
    assert "远程模型服务器" in str(caught.value) and "remote model server" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error"), [(503, TransientError), (401, PermanentError), (403, PermanentError)]
)
def test_load_failures_are_sorted(
    server: FakeOpenAIServer, backend: OpenAIBackend, status: int, error: type[Exception]
) -> None:
    server.models_status = status

    with pytest.raises(error, match="the server is overloaded"):
        backend.load()


def test_load_accepts_server_without_models_list(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    server.models_status = 404

    backend.load()

    assert backend.model_version == MODEL


def test_answer_sends_image_question_and_key(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    image = scan()

    answer = backend.answer(single_image_request(image, "这是哪里？", max_new_tokens=64, temperature=0.2))

    sent = server.chat_requests[0]
    assert sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    body = sent["json"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == (MODEL, 64, 0.2)
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "这是哪里？"}
    header, decoded = decode_data_url(image_part["image_url"]["url"])
    assert header == "data:image/jpeg;base64"
    assert decoded.size == image.size
    # JPEG at quality 90 is lossy but close: the mean pixel difference stays tiny.
    difference = np.asarray(ImageChops.difference(decoded.convert("RGB"), image), dtype=np.float32)
    assert difference.mean() < 2.0
    assert answer.text == "答：这是哪里？"
    assert (answer.prompt_tokens, answer.completion_tokens) == (901, len(answer.text))


def test_transparent_image_goes_as_png(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    image = scan().convert("RGBA")
    image.putpixel((0, 0), (255, 0, 0, 0))

    backend.answer(single_image_request(image, "?"))

    header, decoded = decode_data_url(
        server.chat_requests[0]["json"]["messages"][0]["content"][0]["image_url"]["url"]
    )
    assert header == "data:image/png;base64"
    assert ImageChops.difference(decoded, image).getbbox() is None


def test_multi_turn_history_is_sent(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    request = Request(
        turns=(
            Turn("user", "这是哪里？", (scan(), scan())),
            Turn("assistant", "上海。"),
            Turn("user", "哪一年？"),
        )
    )

    answer = backend.answer(request)

    messages = server.chat_requests[0]["json"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert [p["type"] for p in messages[0]["content"]] == ["image_url", "image_url", "text"]
    assert messages[1:] == [
        {"role": "assistant", "content": "上海。"},
        {"role": "user", "content": "哪一年？"},
    ]
    assert answer.text == "答：哪一年？"


def test_stream_pieces_join_to_answer(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    pieces: list[str] = []

    answer = backend.stream(single_image_request(scan(), "请描述这张扫描件的内容"), pieces.append)

    body = server.chat_requests[0]["json"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert len(pieces) > 3
    assert "".join(pieces) == answer.text == "答：请描述这张扫描件的内容"
    assert (answer.prompt_tokens, answer.completion_tokens) == (901, len(answer.text))


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize(
    ("reply", "reasoning_content"),
    [
        ("<think>先看文字，再看人物。</think>\n\n这是一张毕业合影。", None),
        ("这是一张毕业合影。", "先看文字，再看人物。"),
    ],
    ids=["inline", "reasoning_content"],
)
def test_thinking_is_kept_out_of_the_answer(
    server: FakeOpenAIServer,
    backend: OpenAIBackend,
    streaming: bool,
    reply: str,
    reasoning_content: str | None,
) -> None:
    server.reply, server.reasoning_content = reply, reasoning_content
    pieces: list[str] = []
    request = single_image_request(scan(), "?")

    answer = backend.stream(request, pieces.append) if streaming else backend.answer(request)

    assert answer.text == "这是一张毕业合影。"
    assert answer.reasoning == "先看文字，再看人物。"
    assert "".join(pieces) == (answer.text if streaming else "")


def test_close_tag_without_open_tag_marks_reasoning(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    # Templates that open <think> in the prompt make the model reply "reasoning</think>answer".
    server.reply = "先看文字，再看人物。</think>这是一张毕业合影。"

    answer = backend.answer(single_image_request(scan(), "?"))

    assert (answer.text, answer.reasoning) == ("这是一张毕业合影。", "先看文字，再看人物。")


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_transient_statuses_are_retried(
    server: FakeOpenAIServer, backend: OpenAIBackend, streaming: bool, status: int
) -> None:
    server.plan = [status, status]
    request = single_image_request(scan(), "你好")

    answer = backend.stream(request, lambda _: None) if streaming else backend.answer(request)

    assert answer.text == "答：你好"
    assert len(server.chat_requests) == 3


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
def test_always_503_is_transient_after_retries(
    server: FakeOpenAIServer, backend: OpenAIBackend, streaming: bool
) -> None:
    server.plan = [503] * 5
    request = single_image_request(scan(), "你好")

    with pytest.raises(TransientError) as caught:
        backend.stream(request, lambda _: None) if streaming else backend.answer(request)

    assert len(server.chat_requests) == 3
    assert caught.value.code == "model_remote_down"
    assert "将自动重试" in str(caught.value) and "Will retry" in str(caught.value)
    assert "the server is overloaded" in str(caught.value)


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
def test_connection_refused_is_transient(streaming: bool) -> None:
    remote = make_backend(refused_url(), max_retries=1)
    request = single_image_request(scan(), "你好")

    with pytest.raises(TransientError) as caught:
        remote.stream(request, lambda _: None) if streaming else remote.answer(request)

    assert caught.value.code == "model_remote_down"


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_client_errors_are_permanent_with_server_message(
    server: FakeOpenAIServer, backend: OpenAIBackend, streaming: bool, status: int
) -> None:
    server.plan = [status]
    server.error_message = "The model `glm-test` does not accept images this large"
    request = single_image_request(scan(), "你好")

    with pytest.raises(PermanentError) as caught:
        backend.stream(request, lambda _: None) if streaming else backend.answer(request)

    assert caught.value.code == "model_remote_rejected"
    assert "does not accept images this large" in str(caught.value)
    assert "远程模型服务器拒绝了请求" in str(caught.value)
    assert len(server.chat_requests) == 1


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
def test_timeout_is_transient(server: FakeOpenAIServer, streaming: bool) -> None:
    remote = make_backend(server.url, timeout_seconds=0.3, max_retries=1)
    server.plan = [("sleep", 1.0), ("sleep", 1.0)]
    request = single_image_request(scan(), "你好")

    with pytest.raises(TransientError) as caught:
        remote.stream(request, lambda _: None) if streaming else remote.answer(request)

    assert "0.3 s" in str(caught.value)
    assert len(server.chat_requests) == 2


def test_stream_broken_after_text_is_not_retried(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    server.plan = ["break"]
    pieces: list[str] = []

    with pytest.raises(TransientError):
        backend.stream(single_image_request(scan(), "一二三四五六七八九"), pieces.append)

    assert pieces
    assert len(server.chat_requests) == 1


def test_batch_keeps_order(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    questions = [f"问题{n}" for n in range(5)]

    answers = backend.batch([single_image_request(scan(), q) for q in questions])

    assert [a.text for a in answers] == [f"答：{q}" for q in questions]
    assert len(server.chat_requests) == 5


def test_api_key_never_logged(
    server: FakeOpenAIServer, backend: OpenAIBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.plan = [503, 400]

    backend.load()
    with pytest.raises(PermanentError) as caught:
        backend.answer(single_image_request(scan(), "你好"))
    backend.stream(single_image_request(scan(), "你好"), lambda _: None)
    with pytest.raises(TransientError) as refused:
        make_backend(refused_url()).answer(single_image_request(scan(), "你好"))

    assert any(r.name == "tuwen.generate" for r in caplog.records)
    assert API_KEY not in caplog.text
    assert API_KEY not in str(caught.value) + str(refused.value)
