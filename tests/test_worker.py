"""The persistent queue and the model worker, with the real OCR backend and real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.models import JobStatus
from service.composition import build_service
from service.errors import OutOfMemoryError, TransientError
from service.events import Event, Priority
from service.images import sha256_file
from service.messages import msg
from tests.conftest import wait_until


def _event(
    path: Path, priority: Priority = Priority.BACKLOG, question: str = "这是什么？", **kw: object
) -> Event:
    return Event(
        source=str(kw.pop("source", "watch")),
        question=question,
        images=(str(path),),
        priority=priority,
        sha256=sha256_file(path),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def scans(tmp_path: Path, scan_bytes) -> list[Path]:  # type: ignore[no-untyped-def]
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for index in range(4):
        path = folder / f"scan{index}.jpg"
        path.write_bytes(scan_bytes([f"第{index}号档案", f"Scan number {index}"]))
        paths.append(path)
    return paths


def test_every_event_is_a_job_row_before_work_starts(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    app = build_service(make_config(watches=[]), backend_factory=backend_factory)
    job = app.queue.submit(_event(scans[0]))
    stored = app.store.get(job.id)
    assert stored is not None and stored.status == JobStatus.QUEUED
    app.start()
    done = app.queue.result(job.uid).result(timeout=30)
    app.stop()
    assert done.status == JobStatus.DONE
    assert "第0号档案" in (done.answer or "")
    assert done.ocr_text and "Scan number 0" in done.ocr_text
    assert (done.backend, done.model) == ("ocr", "rapidocr-ppocrv6")
    assert done.model_version and done.width == 600 and done.height == 300 and done.pages == 1
    assert done.latency_ms is not None and done.latency_ms > 0


def test_interactive_jobs_go_before_the_folder_backlog(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    app = build_service(make_config(watches=[], model={"batch_size": 1}), backend_factory=backend_factory)
    order: list[str] = []
    app.queue.add_finished_listener(lambda job: order.append(job.source))
    for path in scans[:3]:
        app.queue.submit(_event(path))
    app.queue.submit(_event(scans[3], Priority.INTERACTIVE, source="api"))
    app.start()
    wait_until(lambda: len(order) == 4)
    app.stop()
    assert order[0] == "api"


def test_backlog_is_batched_and_interactive_jobs_stream(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    app = build_service(make_config(watches=[], model={"batch_size": 4}), backend_factory=backend_factory)
    jobs = [app.queue.submit(_event(path)) for path in scans]
    pieces: list[str] = []
    app.start()
    for job in jobs:
        app.queue.result(job.uid).result(timeout=30)
    streamed = app.queue.submit(_event(scans[0], Priority.INTERACTIVE, source="api"), on_text=pieces.append)
    final = app.queue.result(streamed.uid).result(timeout=30)
    app.stop()
    backend = backend_factory.backends[0]
    assert backend.calls[0] == 4  # the four backlog scans went to the model as one batch
    assert len(pieces) > 1 and "".join(pieces).strip() == (final.answer or "").strip()


def test_transient_failures_are_retried_with_backoff(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    backend_factory.prepare = lambda b: b.failures.extend(
        [TransientError(msg("model_remote_down", reason="connection refused"))] * 2
    )
    config = make_config(watches=[], queue={"retry_base_seconds": 0.2})
    app = build_service(config, backend_factory=backend_factory)
    job = app.queue.submit(_event(scans[0]))
    app.start()
    done = app.queue.result(job.uid).result(timeout=30)
    app.stop()
    assert done.status == JobStatus.DONE
    assert done.attempts == 3
    assert backend_factory.backends[0].requests_answered == 3


def test_retries_run_out_with_a_clear_message(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    backend_factory.prepare = lambda b: b.failures.extend(
        [TransientError(msg("model_remote_down", reason="connection refused"))] * 10
    )
    config = make_config(watches=[], queue={"retry_base_seconds": 0.05, "max_attempts": 3})
    app = build_service(config, backend_factory=backend_factory)
    job = app.queue.submit(_event(scans[0]))
    app.start()
    failed = app.queue.result(job.uid).result(timeout=30)
    app.stop()
    assert failed.status == JobStatus.FAILED and failed.attempts == 3
    assert failed.error_code == "retries_exhausted"
    assert "多次重试后仍失败" in (failed.error or "") and "connection refused" in (failed.error or "")


def test_out_of_memory_shrinks_the_batch(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    backend_factory.prepare = lambda b: b.failures.append(OutOfMemoryError(msg("model_oom")))
    config = make_config(watches=[], model={"batch_size": 4}, queue={"retry_base_seconds": 0.05})
    app = build_service(config, backend_factory=backend_factory)
    jobs = [app.queue.submit(_event(path)) for path in scans]
    app.start()
    results = [app.queue.result(job.uid).result(timeout=30) for job in jobs]
    app.stop()
    assert all(job.status == JobStatus.DONE for job in results)
    calls = backend_factory.backends[0].calls
    assert calls[0] == 4 and max(calls[1:]) <= 2
    assert app.worker.batch_size == 2


def test_bad_image_fails_at_once_and_the_worker_goes_on(
    make_config, backend_factory, scans, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(scans[0].read_bytes()[:200])
    app = build_service(make_config(watches=[]), backend_factory=backend_factory)
    bad = app.queue.submit(_event(broken))
    good = app.queue.submit(_event(scans[1]))
    app.start()
    failed = app.queue.result(bad.uid).result(timeout=30)
    done = app.queue.result(good.uid).result(timeout=30)
    app.stop()
    assert failed.status == JobStatus.FAILED and failed.attempts == 1
    assert (
        failed.error == "无法解码图片：文件已损坏或不完整 / cannot decode image: file is corrupt or truncated"
    )
    assert done.status == JobStatus.DONE


def test_a_crashing_backend_fails_the_job_and_is_restarted(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    def break_first_backend_only(backend) -> None:  # type: ignore[no-untyped-def]
        if not backend_factory.backends:
            backend.failures.append(RuntimeError("CUDA error: device-side assert"))

    backend_factory.prepare = break_first_backend_only
    app = build_service(make_config(watches=[]), backend_factory=backend_factory)
    poison = app.queue.submit(_event(scans[0]))
    app.start()
    failed = app.queue.result(poison.uid).result(timeout=30)
    assert failed.status == JobStatus.FAILED and "device-side assert" in (failed.error or "")
    wait_until(lambda: len(backend_factory.backends) == 2 and app.worker.alive)
    after = app.queue.submit(_event(scans[1]))
    done = app.queue.result(after.uid).result(timeout=30)
    app.stop()
    assert done.status == JobStatus.DONE
    assert backend_factory.backends[0].closed


def test_jobs_left_running_by_a_crash_are_requeued_at_start(make_config, backend_factory, scans) -> None:  # type: ignore[no-untyped-def]
    config = make_config(watches=[])
    first = build_service(config, backend_factory=backend_factory)
    job = first.queue.submit(_event(scans[0]))
    claimed = first.store.claim(1)
    assert [j.id for j in claimed] == [job.id]
    assert first.store.get(job.id).status == JobStatus.RUNNING  # type: ignore[union-attr]
    first.store.engine.dispose()  # the process "dies" here, without stopping

    second = build_service(config, backend_factory=backend_factory)
    assert second.store.get(job.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    second.start()
    done = second.queue.result(job.uid).result(timeout=30)
    second.stop()
    assert done.status == JobStatus.DONE


def test_shutdown_requeues_the_job_in_hand(make_config, backend_factory, scans, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("service.app.STOP_TIMEOUT_SECONDS", 0.2)
    backend_factory.prepare = lambda b: setattr(b, "delay", 1.5)
    config = make_config(watches=[])
    app = build_service(config, backend_factory=backend_factory)
    job = app.queue.submit(_event(scans[0]))
    app.start()
    wait_until(lambda: backend_factory.backends and backend_factory.backends[0].calls)
    app.stop()
    again = build_service(config, backend_factory=backend_factory)
    assert again.store.get(job.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert again.store.get(job.id).attempts == 0  # type: ignore[union-attr]


def test_same_content_and_prompt_reuses_the_answer(make_config, backend_factory, scans, tmp_path) -> None:  # type: ignore[no-untyped-def]
    renamed = tmp_path / "renamed.jpg"
    renamed.write_bytes(scans[0].read_bytes())
    app = build_service(make_config(watches=[]), backend_factory=backend_factory)
    app.start()
    first = app.queue.result(app.queue.submit(_event(scans[0]), dedup=True).uid).result(timeout=30)
    second = app.queue.result(app.queue.submit(_event(renamed), dedup=True).uid).result(timeout=30)
    other_prompt = app.queue.result(
        app.queue.submit(_event(renamed, question="另一个问题"), dedup=True).uid
    ).result(timeout=30)
    app.stop()
    assert second.duplicate_of == first.id and second.answer == first.answer
    assert other_prompt.duplicate_of is None
    assert backend_factory.backends[0].requests_answered == 2


def test_a_reused_answer_keeps_the_staff_correction(make_config, backend_factory, scans, tmp_path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(scans[0].read_bytes())
    app = build_service(make_config(watches=[]), backend_factory=backend_factory)
    app.start()
    first = app.queue.result(app.queue.submit(_event(scans[0]), dedup=True).uid).result(timeout=30)
    app.store.set_review(first.id, "corrected", "民国时期的档案")
    again = app.queue.result(app.queue.submit(_event(copy), dedup=True).uid).result(timeout=30)
    app.stop()
    assert again.duplicate_of == first.id
    assert (again.review_status, again.correction) == ("corrected", "民国时期的档案")
