"""Nothing runs half-alive: a stuck job restarts the worker, and the CLI works beside a running service."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.events import Event, Priority
from tests.conftest import wait_until
from tests.live import running_service
from tests.test_serve import REPO, _free_port, _health, _start, _write_config


def test_a_stuck_job_is_named_in_health_retried_once_then_failed(make_config, backend_factory) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()
    built: list[object] = []

    def prepare(backend) -> None:  # type: ignore[no-untyped-def]
        built.append(backend)
        backend.delay = 30.0  # every answer blocks far beyond the job timeout
        if len(built) > 1:  # a fresh backend takes a moment to load, as a real model does
            real_load = backend.load

            def slow_load() -> None:
                release.wait(1.5)
                real_load()

            backend.load = slow_load

    backend_factory.prepare = prepare
    config = make_config(model={"job_timeout_seconds": 1.0})
    with running_service(config, backend_factory) as live:
        job = live.app.queue.submit(
            Event(source="cli", question="卡住了吗？", images=(), priority=Priority.CLI)
        )
        stuck = wait_until(
            lambda: (r := httpx.get(live.base_url + "/health", timeout=5)).status_code == 503 and r,
            timeout=30,
        )
        failed = wait_until(
            lambda: (j := live.app.store.get_by_uid(job.uid)) is not None and j.status == "failed" and j,
            timeout=60,
        )
        worker = live.app.worker.status()
        recovered = wait_until(
            lambda: (r := httpx.get(live.base_url + "/health", timeout=5)).status_code == 200 and r,
            timeout=30,
        )
    body = stuck.json()  # type: ignore[attr-defined]
    assert body["model_state"] == "stuck" and body["stuck_jobs"] == [job.uid]
    assert job.uid[:8] in body["error"]
    assert failed.timeouts == 1 and failed.error_code == "job_timeout"  # type: ignore[attr-defined]
    assert "job_timeout_seconds" in failed.error  # type: ignore[attr-defined]
    assert worker.restarts >= 2 and len(built) >= 3  # restarted after each timeout
    assert recovered.json()["model_state"] == "ready"  # type: ignore[attr-defined]


def _tuwen(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args, "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ctrl_c_delivered() -> None:
    """In the child: SIGINT as at a terminal.

    A test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and so did the CLI
    under test: it finished its work instead of stopping at the Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def serving(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    config = _write_config(tmp_path, port)
    proc = _start(config, tmp_path / "serve.log")
    try:
        wait_until(lambda: (r := _health(port)) is not None and r.status_code == 200, timeout=60)
        yield config, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)


def _nodes_of(db: Path) -> list[str | None]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT node FROM jobs WHERE source IN ('cli', 'batch')")]


def test_ask_beside_a_running_service_hands_the_job_to_it(serving, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    config, folder = serving
    image = folder / "label.jpg"
    image.write_bytes(scan_bytes(["展品标签 清代"]))
    started = time.monotonic()
    result = _tuwen(config, "ask", str(image), "写了什么？", "--json", timeout=60)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "done" and "展品标签" in record["answer"]
    assert "tuwen serve is running on node" in result.stderr
    assert "model ready" not in result.stderr  # no second copy of the model was loaded
    nodes = _nodes_of(folder / "data" / "tuwen.sqlite3")
    assert nodes and all(node and not node.startswith("cli:") for node in nodes)
    assert seconds < 30


def test_batch_beside_a_running_service_interrupted_and_resumed_writes_every_sidecar(  # type: ignore[no-untyped-def]
    serving, scan_bytes
) -> None:
    config, folder = serving
    box = folder / "box"
    box.mkdir()
    # Enough cards that the running service cannot answer them all between the first answer and the Ctrl-C
    # (eight were once all done within that moment, and the batch ended by itself).
    count = 30
    scans = []
    for index in range(count):
        path = box / f"card{index}.jpg"
        path.write_bytes(scan_bytes([f"卡片 {index} 号"]))
        scans.append(path)
    db = folder / "data" / "tuwen.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "batch", str(box), "--sidecars", "-c", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_ctrl_c_delivered,
    )

    def done() -> int:
        with sqlite3.connect(db) as conn:
            return int(
                conn.execute("SELECT count(*) FROM jobs WHERE source='batch' AND status='done'").fetchone()[0]
            )

    try:
        wait_until(lambda: done() >= 1, timeout=60, interval=0.02)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert "再次运行同一命令即可继续" in stderr and "run the same command again" in stderr.lower()
    assert f" 0 of {count}" not in stderr  # it says how far it got
    resumed = _tuwen(config, "batch", str(box), "--sidecars", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"done {count}, failed 0, of {count}" in resumed.stdout
    for scan in scans:  # also those the service answered while nobody was waiting for them
        data = json.loads(scan.with_name(scan.name + ".json").read_text(encoding="utf-8"))
        assert data["status"] == "done" and scan.with_name(scan.name + ".xmp").exists()
    with sqlite3.connect(db) as conn:
        counts = conn.execute("SELECT count(*) FROM jobs WHERE source='batch'").fetchone()[0]
    assert counts == count  # nothing answered twice


def test_ctrl_c_during_ask_is_one_line(serving, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    config, folder = serving
    image = folder / "slow.jpg"
    image.write_bytes(scan_bytes(["慢"]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "ask", str(image), "-c", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_delivered,
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the answer came before the interrupt")
    assert proc.returncode == 130
    assert "Traceback" not in stderr and ("已中断" in stderr)
