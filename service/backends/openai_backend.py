"""A remote OpenAI-compatible server (vLLM, SGLang, LMDeploy, Ollama, Zhipu) as the model.

It runs on the single model-worker thread, so it uses httpx's synchronous client. Failures are sorted
the way the job queue needs them:

- connect errors, timeouts, HTTP 408/429/5xx: retried here with exponential backoff (honouring a short
  `Retry-After`) up to `[openai] max_retries`, then `TransientError(model_remote_down)` so the queue tries
  the job again later. vLLM, SGLang and Ollama answer 503 when their queue is full, which is exactly this.
- any other 4xx: `PermanentError(model_remote_rejected)` with the server's own `error.message`, because
  resending the same request cannot help (bad model name, image too large, wrong key).

Reasoning models (GLM-4.6V among them) may return `<think>…</think>` inline or in a `reasoning_content`
field; either way it goes to `Answer.reasoning`, not the answer text, when `[model] strip_thinking`.
The API key is sent only in the Authorization header and never logged; neither are images.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from PIL import Image

from service.backends.base import Answer, OnText, Request, Turn
from service.backends.endpoints import Endpoints
from service.errors import PermanentError, TransientError
from service.messages import msg
from service.reasoning import ReasoningFilter
from service.retry import Backoff
from service.supervisor import ComponentStatus

if TYPE_CHECKING:
    from service.config import Config

logger = logging.getLogger("tuwen.generate")

T = TypeVar("T")
RETRYABLE_STATUS = frozenset({408, 429, *range(500, 600)})
# Failures that say "this server cannot be reached" (refused, unroutable, reset, dropped mid-reply): the
# server is left out for a while. A read timeout is not one of them: the server is there, only slow.
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.RemoteProtocolError)
MAX_BACKOFF_SECONDS = 30.0
JPEG_QUALITY = 90


class _Retryable(Exception):
    """One failed attempt that another attempt may fix; `reason` is for the user-facing message."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def image_data_url(image: Image.Image) -> str:
    """Encode `image` as a base64 data URL: PNG when it has transparency, JPEG (quality 90) otherwise."""
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # JPEG has no alpha, and flattening it would blacken transparent areas.
        image.save(buffer, format="PNG")
    else:
        rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    mime = "image/png" if buffer.getvalue().startswith(b"\x89PNG") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def build_messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """The `messages` array: user turns with images become image parts followed by one text part."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        images = turn.images if turn.role == "user" else ()
        parts = [{"type": "image_url", "image_url": {"url": image_data_url(i)}} for i in images]
        content = [*parts, {"type": "text", "text": turn.text}] if parts else turn.text
        messages.append({"role": turn.role, "content": content})
    return messages


def server_error_message(response: httpx.Response) -> str:
    """The server's own explanation: OpenAI's `error.message`, FastAPI's `detail`, or the body's start."""
    try:
        body = response.json()
        error = body.get("error")
        detail = error.get("message") if isinstance(error, dict) else error
        return next(v for v in (detail, body.get("detail"), body.get("message")) if isinstance(v, str) and v)
    except (ValueError, AttributeError, StopIteration):
        return response.text.strip()[:200] or "(no details)"  # not an error object: show the body's start


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: use our own backoff


def _reasoning_of(part: dict[str, Any]) -> str:
    # vLLM and DeepSeek say `reasoning_content`; newer vLLM and some gateways say `reasoning`.
    value = part.get("reasoning_content") or part.get("reasoning")
    return value if isinstance(value, str) else ""


class OpenAIBackend:
    """The `openai` backend: POSTs to `{base_url}/chat/completions` of a remote server."""

    name = "openai"
    answer_kind = "model"

    def __init__(self, config: Config, *, backoff_seconds: float = 1.0) -> None:
        self.config, self.settings, self.backoff_seconds = config, config.openai, backoff_seconds
        self.endpoints = Endpoints(self.settings.urls)
        self.base_url = self.endpoints.all[0].url
        # The dispatcher keeps this many backlog requests (and as many interactive ones) in flight.
        self.concurrency = self.settings.concurrency
        self.model_id = self.model_version = self.settings.model
        timeout = self.settings.timeout_seconds
        key = self.settings.api_key.get_secret_value()
        headers = {"Accept": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        # A refused or unroutable connection should fail in seconds, not after the full generation timeout.
        limits = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        # One pooled connection per request in flight, so keep-alive connections are reused, not re-opened.
        pool = 2 * self.concurrency * len(self.endpoints.all) + 4
        self._client = httpx.Client(
            headers=headers,
            timeout=limits,
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )

    def load(self) -> None:
        """Check that the servers answer `GET /models`; learn the model version from the first that does.

        No server up is a `TransientError` (the service keeps running and retries); one that is down while
        another answers is left out for a while (see `endpoints`). A server that refuses our key is a
        `PermanentError`. A server without `/models` (some gateways) is accepted.
        """
        reasons, versions = [], []
        for endpoint in self.endpoints.all:
            try:
                versions.append(self._check_models(endpoint.url))
                self.endpoints.succeeded(endpoint)
            except (httpx.TransportError, _Retryable) as exc:
                reason = exc.reason if isinstance(exc, _Retryable) else self._describe(exc, endpoint.url)
                self.endpoints.unreachable(endpoint, reason)
                reasons.append(reason)
        if not versions:
            raise TransientError(msg("model_remote_down", reason="; ".join(reasons)))
        self.model_version = next((v for v in versions if v), self.model_id)
        logger.info("model server(s) ready: %s (%s)", self.model_id, self.model_version)

    def _check_models(self, url: str) -> str | None:
        """The model version one server's `/models` names (None when it has no usable `/models`)."""
        response = self._client.get(f"{url}/models")
        if response.status_code in RETRYABLE_STATUS or response.status_code in (401, 403):
            self._check_status(response)
        if response.status_code != 200:
            logger.warning("server %s has no usable /models (HTTP %d)", url, response.status_code)
            return None
        return self._version_from_models(response, url)

    def _version_from_models(self, response: httpx.Response, url: str) -> str:
        try:
            entries = response.json().get("data") or []
        except (ValueError, AttributeError):
            entries = []
        entry = next((e for e in entries if isinstance(e, dict) and e.get("id") == self.model_id), None)
        if entry is None:
            listed = [e.get("id") for e in entries if isinstance(e, dict)]
            logger.warning("model %r not listed by %s (it lists %s)", self.model_id, url, listed)
            return self.model_id
        # `root` is the weights a vLLM/SGLang server was started from. `created` is not used: vLLM fills
        # it with the time of the listing, so it would change on every restart.
        root = entry.get("root")
        return str(root) if root else str(entry["id"])

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def cancel(self) -> None:
        """Abandon every request in flight (the watchdog, for a stuck job): their connections are closed."""
        self._client.close()

    def answer(self, request: Request) -> Answer:
        """Answer one request with a non-streaming chat completion."""
        body = self._body(request, stream=False)
        data = self._with_retries(request, lambda url: self._post_once(url, body))
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            think = ReasoningFilter(self.config.model.strip_thinking)
            text = think.feed(message.get("content") or "") + think.finish()
            reasoning = [_reasoning_of(message), think.reasoning]
            return self._answer(text, reasoning, data.get("usage"), choice.get("finish_reason"))
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise PermanentError(msg("model_failed", reason=f"unexpected reply: {str(data)[:200]}")) from exc

    def stream(self, request: Request, on_text: OnText) -> Answer:
        """Answer one request over SSE, calling `on_text` with each visible piece of text.

        Retries happen only before the first piece reaches `on_text`; a stream that breaks later raises
        `TransientError`, because resending would repeat text the caller has already shown.
        """
        body = self._body(request, stream=True)
        state = {"emitted": False}
        return self._with_retries(
            request, lambda url: self._stream_once(url, body, on_text, state), lambda: not state["emitted"]
        )

    def batch(self, requests: Sequence[Request]) -> list[Answer]:
        """Answer several requests concurrently (up to `[model] batch_size`); the server batches them.

        Results keep the order of `requests`; the first failure (in that order) is raised after all finish.
        """
        if len(requests) <= 1:
            return [self.answer(r) for r in requests]
        workers = min(len(requests), self.config.model.batch_size)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tuwen-openai") as pool:
            futures = [pool.submit(self.answer, r) for r in requests]
            return [f.result() for f in futures]

    def _body(self, request: Request, *, stream: bool) -> dict[str, Any]:
        # `[openai] extra_body` first, so what tuwen sets for this request wins.
        body: dict[str, Any] = dict(self.settings.extra_body)
        body |= {
            "model": self.model_id,
            "messages": build_messages(request.turns),
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
        }
        options = request.options
        for name in ("top_p", "seed", "presence_penalty", "frequency_penalty"):
            if (value := getattr(options, name)) is not None:
                body[name] = value
        if options.stop:
            body["stop"] = list(options.stop)
        if options.thinking is not None:
            # GLM-4.6V (vLLM, SGLang) reasons by default; the chat template takes the switch.
            template = body.get("chat_template_kwargs")
            body["chat_template_kwargs"] = {
                **(template if isinstance(template, dict) else {}),
                "enable_thinking": options.thinking,
            }
        # Without include_usage, servers send no token counts in a stream.
        return body | ({"stream": True, "stream_options": {"include_usage": True}} if stream else {})

    def _check_status(self, response: httpx.Response) -> None:
        """Raise `_Retryable` or `PermanentError` for a non-200 reply (its body must be read)."""
        if response.status_code == 200:
            return
        reason = f"HTTP {response.status_code}: {server_error_message(response)}"
        if response.status_code in RETRYABLE_STATUS:
            raise _Retryable(reason, _retry_after(response))
        raise PermanentError(msg("model_remote_rejected", reason=reason))

    def _post_once(self, url: str, body: dict[str, Any]) -> Any:
        response = self._client.post(f"{url}/chat/completions", json=body)
        self._check_status(response)
        try:
            return response.json()
        except ValueError as exc:  # a proxy's HTML page or a server that is not OpenAI-compatible
            reason = f"reply is not JSON: {response.text[:200]}"
            raise PermanentError(msg("model_failed", reason=reason)) from exc

    def _stream_once(self, url: str, body: dict[str, Any], on_text: OnText, state: dict[str, bool]) -> Answer:
        think = ReasoningFilter(self.config.model.strip_thinking)
        reasoning: list[str] = []
        pieces: list[str] = []
        usage: Any = None
        finish_reason = None

        def show(text: str) -> None:
            if text:
                state["emitted"] = True
                pieces.append(text)
                on_text(text)

        with self._client.stream("POST", f"{url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                self._check_status(response)
            for chunk in _sse_events(response.iter_lines()):
                error = chunk.get("error")
                if error:
                    # vLLM reports failures inside an open stream as a data event with an `error` object.
                    detail = error.get("message") if isinstance(error, dict) else error
                    raise _Retryable(f"error in stream: {detail}")
                usage = chunk.get("usage") or usage  # the last chunk, thanks to `include_usage`
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    reasoning.append(_reasoning_of(delta))
                    show(think.feed(delta.get("content") or ""))
                    finish_reason = choice.get("finish_reason") or finish_reason
        show(think.finish())
        return self._answer("".join(pieces), ["".join(reasoning), think.reasoning], usage, finish_reason)

    def _answer(self, text: str, reasoning: list[str], usage: Any, finish_reason: Any) -> Answer:
        usage = usage if isinstance(usage, dict) else {}
        answer = Answer(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            reasoning="\n".join(r for r in reasoning if r) or None,
            finish_reason="length" if finish_reason == "length" else "stop",
            extra={"finish_reason": finish_reason},
        )
        logger.info("%d characters, usage %s, finish %s", len(text), usage, finish_reason)
        return answer

    def _with_retries(
        self, request: Request, attempt: Callable[[str], T], can_retry: Callable[[], bool] | None = None
    ) -> T:
        """Run `attempt(url)`; retry transient failures with backoff; raise `TransientError` when spent.

        A server that cannot be reached is left out and the attempt moves to another at once (not counted,
        at most once per server); busy replies and timeouts are retried with backoff on whichever server
        has the fewest requests in flight then.
        """
        attempts = self.settings.max_retries + 1
        backoff = Backoff(base=self.backoff_seconds, cap=MAX_BACKOFF_SECONDS)
        number, tried = 0, frozenset[str]()
        while True:
            with self.endpoints.use(tried) as endpoint:
                try:
                    result = attempt(endpoint.url)
                except PermanentError:
                    self.endpoints.succeeded(endpoint)  # it answered: reachable, only this request is bad
                    raise
                except (_Retryable, httpx.TransportError) as exc:
                    error: Exception = exc
                    reason = exc.reason if isinstance(exc, _Retryable) else self._describe(exc, endpoint.url)
                    if isinstance(exc, UNREACHABLE):
                        self.endpoints.unreachable(endpoint, reason)
                        tried |= {endpoint.url}
                        if (can_retry is None or can_retry()) and self.endpoints.others_usable(tried):
                            logger.warning("%s; trying another server", reason)
                            continue
                else:
                    self.endpoints.succeeded(endpoint)
                    return result
            number += 1
            last = number >= attempts or (can_retry is not None and not can_retry())
            delay = backoff.next_delay()
            hinted = error.retry_after if isinstance(error, _Retryable) else None
            if hinted is not None and 0 <= hinted <= MAX_BACKOFF_SECONDS:
                delay = max(delay, hinted)  # the server knows its queue better than our guess
            then = "giving up for now" if last else f"retrying in {delay:.1f} s"
            logger.warning("failed (%d/%d): %s; %s", number, attempts, reason, then)
            if last:
                raise TransientError(msg("model_remote_down", reason=reason)) from error
            time.sleep(delay)
            tried = frozenset()

    def _describe(self, exc: httpx.TransportError, url: str) -> str:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return f"no reply from {url} within {self.settings.timeout_seconds:g} s"
        return f"{type(exc).__name__} ({url}): {exc}"

    def endpoint_statuses(self) -> list[ComponentStatus]:
        """Each server's state (for `/health` and `/metrics`)."""
        return self.endpoints.statuses()


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """JSON objects from an SSE stream's `data:` lines, up to `[DONE]`; comments and blanks skipped."""
    for line in lines:
        payload = line[len("data:") :].strip() if line.startswith("data:") else ""
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload) if payload else None
        except ValueError:
            event = None  # a proxy's keep-alive or garbage: skip it rather than fail the answer
        if isinstance(event, dict):
            yield event
