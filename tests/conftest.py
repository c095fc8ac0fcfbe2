"""Shared fixtures: the tiny random GLM-4V checkpoint (built once per run) and rendered scans."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Model hubs are unreachable here and in CI: fail fast instead of retrying for ~23 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_glm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A standard GLM-4V checkpoint folder with random weights, built offline."""
    from bench.tinyglm import build_tiny_glm

    return build_tiny_glm(tmp_path_factory.mktemp("tiny-glm4v"))


# --- the spine with the real embedded OCR backend ------------------------------------------------------

import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402

from service.backends.base import Answer, OnText, Request  # noqa: E402
from service.config import Config, HttpConfig, ImagesConfig, StorageConfig, WatchConfig  # noqa: E402


@pytest.fixture(scope="session")
def ocr_engine():  # type: ignore[no-untyped-def]
    """One RapidOCR engine for the whole run (its ONNX sessions take seconds to build)."""
    from bench.render import render_text_image
    from service.backends.ocr_backend import OcrEngine

    engine = OcrEngine()
    engine.read(render_text_image(["预热 warm-up"], size=(300, 80), font_size=24))  # loads all three models
    return engine


class InstrumentedBackend:
    """The real OCR backend, counting calls and failing on demand (fault injection at the boundary)."""

    def __init__(self, config: Config, engine: object) -> None:
        from service.backends.ocr_backend import OcrBackend

        self.inner = OcrBackend(config, engine=engine)  # type: ignore[arg-type]
        self.name = self.inner.name
        self.answer_kind = self.inner.answer_kind
        self.model_id = self.inner.model_id
        self.model_version = self.inner.model_version
        self.calls: list[int] = []  # number of requests per call
        self.failures: list[Exception] = []  # raised, in order, before answering
        self.delay = 0.0
        self.closed = False
        self.lock = threading.Lock()

    def load(self) -> None:
        self.model_version = self.inner.model_version

    def _maybe_fail(self, count: int) -> None:
        with self.lock:
            self.calls.append(count)
            failure = self.failures.pop(0) if self.failures else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            raise failure

    def answer(self, request: Request) -> Answer:
        self._maybe_fail(1)
        return self.inner.answer(request)

    def stream(self, request: Request, on_text: OnText) -> Answer:
        self._maybe_fail(1)
        return self.inner.stream(request, on_text)

    def batch(self, requests: Sequence[Request]) -> list[Answer]:
        self._maybe_fail(len(requests))
        return self.inner.batch(requests)

    def close(self) -> None:
        self.closed = True

    @property
    def requests_answered(self) -> int:
        return sum(self.calls)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """A config rooted in tmp_path: data in tmp_path/data, one watch on tmp_path/inbox, fast settings."""

    def factory(watches: list[dict[str, object]] | None = None, **tables: object) -> Config:
        inbox = tmp_path / "inbox"
        inbox.mkdir(exist_ok=True)
        watch_list = [
            WatchConfig(**{"path": inbox, "stable_seconds": 0.3, **w})  # type: ignore[arg-type]
            for w in (watches if watches is not None else [{}])
        ]
        config = Config(
            storage=StorageConfig(data_dir=tmp_path / "data"),
            http=HttpConfig(enabled=False),
            images=ImagesConfig(),
            watch=watch_list,
        )
        for table, values in tables.items():
            setattr(config, table, getattr(config, table).model_copy(update=values))  # type: ignore[arg-type]
        return config

    return factory


@pytest.fixture
def backend_factory(ocr_engine: object) -> Iterator[Callable[[Config], InstrumentedBackend]]:
    """A factory the worker calls; `factory.backends` lists every backend it built."""
    built: list[InstrumentedBackend] = []

    def factory(config: Config) -> InstrumentedBackend:
        backend = InstrumentedBackend(config, ocr_engine)
        if factory.prepare is not None:  # type: ignore[attr-defined]
            factory.prepare(backend)  # type: ignore[attr-defined]
        built.append(backend)
        return backend

    factory.backends = built  # type: ignore[attr-defined]
    factory.prepare = None  # type: ignore[attr-defined]
    yield factory


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05) -> object:
    """Poll `predicate` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def scan_bytes() -> Callable[..., bytes]:
    """JPEG bytes of a rendered Chinese/English 'scan'."""
    import io

    from bench.render import render_text_image

    def make(lines: list[str] | None = None, size: tuple[int, int] = (600, 300)) -> bytes:
        image = render_text_image(lines or ["图问档案馆", "Archive scan"], size=size, font_size=32)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    return make


# --- the browser (Debian's chromium through Playwright) ---------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One chromium for the module; each test gets a fresh context (see tests/browser.py)."""
    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


# --- leaving the test process --------------------------------------------------------------------------

_EXIT_STATUS: int | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remember pytest's verdict for `pytest_unconfigure`."""
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own exit status, skipping interpreter teardown.

    After every test has run and the summary is printed, background threads some tests leave behind (model
    workers and bot loops of services a failing assertion did not stop, uvicorn threads) can still be inside
    onnxruntime's or torch's native thread pools; tearing the interpreter down under them has aborted the
    process ("terminate called without an active exception", SIGABRT) and turned a green run red. The service
    itself stops its threads (tests/test_serve.py checks `tuwen serve` exits 0 on SIGTERM); this only concerns
    the test process. The names of the threads still alive are printed so a leak can be traced.
    """
    if _EXIT_STATUS is None or os.environ.get("TUWEN_TESTS_SOFT_EXIT"):
        return
    leftover = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
    if leftover:
        print(f"\n[tuwen tests] threads still alive at exit: {', '.join(leftover)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS)


# --- a throwaway PostgreSQL cluster (tests/pg.py) --------------------------------------------------------

from tests.pg import pg_cluster, pg_url, store_on_each  # noqa: E402, F401
