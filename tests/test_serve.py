"""`tuwen serve` as a real process: /health, a dropped scan answered, SIGTERM, and kill -9 mid-backlog."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(folder: Path, port: int, extra: str = "") -> Path:
    config = folder / "config.toml"
    config.write_text(
        f"""
[storage]
data_dir = "data"
[http]
port = {port}
[[watch]]
path = "inbox"
name = "inbox"
stable_seconds = 0.3
{extra}
""",
        encoding="utf-8",
    )
    (folder / "inbox").mkdir(exist_ok=True)
    return config


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    handle = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "-c", str(config)],
        cwd=REPO,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _health(port: int) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.HTTPError:
        return None


def _done_counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT file_path, count(*) FROM jobs WHERE status='done' GROUP BY file_path")
        except sqlite3.OperationalError:  # the service is still creating the schema
            return {}
        return {str(path): int(count) for path, count in rows}


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    return tmp_path


def test_serve_health_answer_and_clean_sigterm(service_dir: Path, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    config = _write_config(service_dir, port)
    log = service_dir / "serve.log"
    proc = _start(config, log)
    try:
        response = wait_until(lambda: (r := _health(port)) is not None and r.status_code == 200 and r, 60)
        body = response.json()  # type: ignore[attr-defined]
        assert body["status"] == "healthy" and body["backend"] == "ocr"
        assert {"version", "uptime_seconds", "queue_depth"} <= set(body)
        scan = service_dir / "inbox" / "scan.jpg"
        scan.write_bytes(scan_bytes(["区档案馆 第一卷"]))
        wait_until(
            lambda: scan.with_name("scan.jpg.json").exists() and scan.with_name("scan.jpg.xmp").exists()
        )
        sidecar = json.loads(scan.with_name("scan.jpg.json").read_text(encoding="utf-8"))
        assert sidecar["status"] == "done" and "区档案馆" in sidecar["answer"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
    assert code == 0
    text = log.read_text(encoding="utf-8")
    assert "stopped cleanly" in text
    assert "Traceback" not in text
    # Logger names tell vision preprocessing, generation and service events apart.
    assert "tuwen.vision" in text and "tuwen.service" in text and "tuwen.watchers" in text
    # Every line of a job carries its id, put there by the log formatter, not pasted by each call.
    job_lines = [line for line in text.splitlines() if "[job " in line]
    assert any("tuwen.vision" in line for line in job_lines) and any("done in" in line for line in job_lines)


def test_kill_mid_backlog_then_restart_loses_nothing_and_repeats_nothing(
    service_dir: Path, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    config = _write_config(service_dir, port)
    inbox = service_dir / "inbox"
    files = []
    for index in range(10):
        path = inbox / f"scan{index:02d}.jpg"
        path.write_bytes(scan_bytes([f"档案 第{index}号", f"Box {index}"]))
        files.append(path)
    db = service_dir / "data" / "tuwen.sqlite3"
    log = service_dir / "serve.log"
    first = _start(config, log)
    try:
        wait_until(lambda: 2 <= len(_done_counts(db)) < len(files), timeout=90, interval=0.02)
    finally:
        first.kill()  # SIGKILL: no clean-up at all
        first.wait(timeout=10)
    assert len(_done_counts(db)) < len(files)

    second = _start(config, log)
    try:
        wait_until(lambda: all(p.with_name(p.name + ".json").exists() for p in files), timeout=120)
        wait_until(lambda: len(_done_counts(db)) == len(files), timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=40) == 0
    counts = _done_counts(db)
    assert counts == {str(p): 1 for p in files}  # every scan answered exactly once
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE status != 'done'").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for path in files:
        data = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        assert data["status"] == "done" and f"第{path.stem[-2:].lstrip('0') or '0'}号" in data["answer"]


def test_port_in_use_exits_non_zero_with_a_plain_message(service_dir: Path, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        config = _write_config(service_dir, port)
        scan = service_dir / "inbox" / "scan.jpg"
        scan.write_bytes(scan_bytes())
        log = service_dir / "serve.log"
        proc = _start(config, log)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text(encoding="utf-8")
    assert code == 1  # systemd and compose restart it; a service without its web server helps nobody
    assert f"{port}" in text and "[http] port" in text and "Traceback" not in text
    assert not scan.with_name("scan.jpg.json").exists()  # nothing ran half-alive


@pytest.mark.parametrize("problem", ["corrupt", "unwritable"])
def test_an_unusable_database_or_data_dir_stops_start_with_a_plain_message(
    service_dir: Path, problem: str
) -> None:
    port = _free_port()
    config = _write_config(service_dir, port)
    data = service_dir / "data"
    if problem == "corrupt":
        data.mkdir()
        (data / "tuwen.sqlite3").write_bytes(b"this is not a database, it is a scan someone misplaced" * 20)
        expected = "损坏"
    else:
        data.write_text("a file where the data folder should be", encoding="utf-8")
        expected = "[storage] data_dir"
    log = service_dir / "serve.log"
    proc = _start(config, log)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(encoding="utf-8")
    assert code == 1
    assert expected in text and "Traceback" not in text and "sqlalchemy" not in text.lower()
