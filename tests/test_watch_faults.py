"""A watched folder never stops silently: crashes restart, odd files and names are handled, health tells.

Real folders in tmp_path, real watchdog observers, the real OCR backend; faults injected only where the
machine cannot produce them (an exception inside the watcher's own loop).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import App
from service.composition import build_service
from tests.conftest import wait_until
from tests.live import running_service

GBK_NAME = "民国档案第一卷.jpg".encode("gbk")  # what a Windows share or a zip hands Linux


def _sidecar_bytes(folder: Path, name: bytes, suffix: bytes) -> dict[str, Any] | None:
    path = os.path.join(os.fsencode(folder), name + suffix)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def _sidecar(path: Path) -> dict[str, Any] | None:
    side = path.with_name(path.name + ".json")
    return json.loads(side.read_text(encoding="utf-8")) if side.exists() else None


def _health(base_url: str) -> httpx.Response:
    return httpx.get(base_url + "/health", timeout=5)


def _component(app: App, prefix: str) -> Any:
    return next(c for c in app.components() if c.name.startswith(prefix))


def test_a_crash_in_the_watcher_loop_restarts_it_and_nothing_is_lost(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes, caplog, monkeypatch
) -> None:
    from watchers.scanning import FolderRules

    real_walk = FolderRules.walk
    crashes = {"left": 1}

    def flaky_walk(self):  # type: ignore[no-untyped-def]
        if crashes["left"]:
            crashes["left"] -= 1
            raise RuntimeError("the NAS driver hiccuped")
        return real_walk(self)

    monkeypatch.setattr(FolderRules, "walk", flaky_walk)
    config = make_config()
    scan = config.watch[0].path / "after-crash.jpg"
    scan.write_bytes(scan_bytes(["崩溃之后"]))
    app = build_service(config, backend_factory=backend_factory)
    with caplog.at_level(logging.ERROR, logger="tuwen.service.supervisor"):
        app.start()
        wait_until(lambda: _sidecar(scan), timeout=60)
    status = _component(app, "watch:")
    app.stop()
    assert status.restarts == 1 and status.state == "running"
    crash_lines = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert crash_lines and str(config.watch[0].path) in crash_lines[0].getMessage()


def test_health_and_metrics_say_when_a_watched_folder_is_gone(make_config, backend_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "unmounted-share"
    config = make_config(watches=[{"path": missing, "name": "share"}], http={"enabled": True})
    with running_service(config, backend_factory) as live:
        response = wait_until(lambda: (r := _health(live.base_url)).status_code == 503 and r, timeout=30)
        body = response.json()  # type: ignore[attr-defined]
        watch = next(c for c in body["components"] if c["name"] == "watch:share")
        metrics = httpx.get(live.base_url + "/metrics", timeout=5).text
        missing.mkdir()  # the share is back
        healthy = wait_until(lambda: (r := _health(live.base_url)).status_code == 200 and r, timeout=30)
    assert body["status"] == "unhealthy" and watch["state"] == "unavailable"
    assert str(missing) in watch["error"] and str(missing) in body["error"]
    assert 'tuwen_source_up{kind="watch",name="watch:share"} 0.0' in metrics
    assert 'tuwen_source_restarts_total{kind="watch",name="watch:share"} 0.0' in metrics
    assert healthy.json()["status"] == "healthy"  # type: ignore[attr-defined]


def test_a_file_that_keeps_failing_is_recorded_once_and_skipped(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes, monkeypatch
) -> None:
    import watchers.intake

    calls: list[str] = []
    real = watchers.intake.sha256_file

    def poisoned(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).name == "poison.jpg":
            calls.append(str(path))
            raise RuntimeError("a bug that this one file triggers")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(watchers.intake, "sha256_file", poisoned)
    config = make_config(watches=[{"rescan_seconds": 0.3}])
    inbox = config.watch[0].path
    (inbox / "poison.jpg").write_bytes(scan_bytes(["有毒的文件"]))
    good = inbox / "good.jpg"
    good.write_bytes(scan_bytes(["正常的文件"]))
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    record = wait_until(lambda: _sidecar(inbox / "poison.jpg"), timeout=60)
    wait_until(lambda: _sidecar(good), timeout=60)
    time.sleep(2.0)  # several rescans
    status = _component(app, "watch:")
    app.stop()
    assert record["status"] == "failed" and "内部错误" in record["error"]  # type: ignore[index]
    assert len(calls) == 1  # never tried again in a loop
    assert status.state == "running" and status.restarts == 0
    assert [j.status for j in app.store.list_jobs(limit=10)].count("failed") == 1


def test_gbk_file_names_are_handled_end_to_end(make_config, backend_factory, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    config = make_config(watches=[{"catalogue": True}], http={"enabled": True})
    inbox = config.watch[0].path
    with open(os.path.join(os.fsencode(inbox), GBK_NAME), "wb") as handle:
        handle.write(scan_bytes(["民国档案 第一卷"]))
    with running_service(config, backend_factory) as live:
        data = wait_until(lambda: _sidecar_bytes(inbox, GBK_NAME, b".json"), timeout=60)
        listing = httpx.get(live.base_url + "/api/jobs", timeout=10).json()
        job_id = listing["items"][0]["id"]
        thumbnail = httpx.get(live.base_url + f"/api/jobs/{job_id}/thumbnail", timeout=10)
        export = httpx.get(live.base_url + "/api/jobs/export.csv", timeout=10)
    names = sorted(os.listdir(os.fsencode(inbox)))
    assert GBK_NAME + b".json" in names and GBK_NAME + b".xmp" in names  # named from the original bytes
    assert data["status"] == "done" and "民国档案" in data["answer"]  # type: ignore[index]
    assert "\ufffd" in data["file_name"]  # type: ignore[index]  # shown with replacement characters
    assert listing["items"][0]["status"] == "done" and "\ufffd" in listing["items"][0]["file_name"]
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert export.status_code == 200 and "\ufffd" in export.text
    catalogue = (inbox / "tuwen-catalogue.csv").read_text(encoding="utf-8-sig")
    assert "民国档案" in catalogue


def test_a_name_too_long_for_sidecars_gets_a_shortened_one_and_a_note(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes
) -> None:
    config = make_config()
    inbox = config.watch[0].path
    long_name = "档" * 82 + ".jpg"  # 250 bytes in UTF-8: legal, but NAME.json would be 255 + 5
    scan = inbox / long_name
    scan.write_bytes(scan_bytes(["很长的文件名"]))
    first = build_service(config, backend_factory=backend_factory)
    first.start()
    sidecar = wait_until(lambda: next(inbox.glob("*~*.json"), None), timeout=60)
    first.stop()
    data = json.loads(sidecar.read_text(encoding="utf-8"))  # type: ignore[union-attr]
    assert len(os.fsencode(sidecar.name)) <= 255  # type: ignore[union-attr]
    assert data["status"] == "done" and data["file_name"] == long_name
    assert data["notes"][0]["code"] == "sidecar_name_shortened"
    job = first.store.list_jobs(limit=1)[0]
    assert job.notes and job.notes[0]["code"] == "sidecar_name_shortened"
    sidecar.unlink()  # type: ignore[union-attr]
    second = build_service(config, backend_factory=backend_factory)
    second.start()  # the start-up repair must cope with such names
    wait_until(lambda: next(inbox.glob("*~*.json"), None), timeout=60)
    status = _component(second, "watch:")
    second.stop()
    assert status.state == "running" and status.restarts == 0


def test_links_and_special_files_are_skipped_once(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes, tmp_path, caplog
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(scan_bytes(["别的部门的文件"]))
    config = make_config(watches=[{"rescan_seconds": 0.3}])
    inbox = config.watch[0].path
    (inbox / "to-outside.jpg").symlink_to(outside / "secret.jpg")
    (inbox / "to-a-folder.jpg").symlink_to(outside)
    os.mkfifo(inbox / "pipe.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(inbox / "sock.jpg"))
    ordinary = inbox / "ordinary.jpg"
    ordinary.write_bytes(scan_bytes(["普通的文件"]))
    app = build_service(config, backend_factory=backend_factory)
    with caplog.at_level(logging.INFO, logger="tuwen.watchers"):
        app.start()
        wait_until(lambda: _sidecar(ordinary), timeout=60)
        time.sleep(2.0)  # many rescans
        app.stop()
    listener.close()
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    for name in ("to-outside.jpg", "to-a-folder.jpg", "pipe.jpg", "sock.jpg"):
        assert sum(name in line for line in skipped) == 1, (name, skipped)
    assert [j.file_path for j in app.store.list_jobs(limit=10)] == [str(ordinary)]
    assert not (inbox / "to-outside.jpg.json").exists()


def test_follow_links_takes_a_link_to_outside_when_asked(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes, tmp_path
) -> None:
    outside = tmp_path / "shared-scans"
    outside.mkdir()
    (outside / "scan.jpg").write_bytes(scan_bytes(["共享的扫描件"]))
    config = make_config(watches=[{"follow_links": True}])
    link = config.watch[0].path / "linked.jpg"
    link.symlink_to(outside / "scan.jpg")
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    data = wait_until(lambda: _sidecar(link), timeout=60)
    app.stop()
    assert data["status"] == "done" and "共享的扫描件" in data["answer"].replace(" ", "")  # type: ignore[index]


def test_content_replaced_with_the_same_size_and_mtime_is_noticed(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes
) -> None:
    config = make_config(watches=[{"rescan_seconds": 0.5}])
    inbox = config.watch[0].path
    scan = inbox / "card.jpg"
    first_bytes = scan_bytes(["第一张卡片"])
    scan.write_bytes(first_bytes)
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    wait_until(lambda: _sidecar(scan), timeout=60)
    st = scan.stat()
    second_bytes = scan_bytes(["第二张卡片"])
    second_bytes = second_bytes[: len(first_bytes)].ljust(len(first_bytes), b"\0")
    assert len(second_bytes) == len(first_bytes)
    # What `cp -p` or `rsync -t` do: other content, the same size, the old mtime.
    scan.write_bytes(second_bytes)
    os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (scan.stat().st_size, scan.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    wait_until(lambda: len(app.store.list_jobs(limit=10)) == 2, timeout=60)
    app.stop()
    shas = {j.sha256 for j in app.store.list_jobs(limit=10)}
    assert len(shas) == 2


def test_a_kill_mid_write_leaves_no_temporary_files_and_a_complete_catalogue(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes
) -> None:
    config = make_config(watches=[{"catalogue": True}])
    inbox = config.watch[0].path
    scans = []
    for index in range(3):
        path = inbox / f"roll{index}.jpg"
        path.write_bytes(scan_bytes([f"卷 {index}"]))
        scans.append(path)
    first = build_service(config, backend_factory=backend_factory)
    first.start()
    wait_until(lambda: all(_sidecar(p) for p in scans), timeout=60)
    first.stop()
    # What a kill -9 in the middle of the sidecar and catalogue writes leaves: a half-written temporary
    # sidecar, and a job whose catalogue row never reached the disk.
    (inbox / "roll1.jpg.json.1a2b3c4d.tuwen-tmp").write_bytes(b'{"schema": "tuwen-sid')
    lost = first.store.list_jobs(limit=10)[0]
    with first.store.write_session() as session:
        from db.models import Job

        session.get(Job, lost.id).catalogued = 0  # type: ignore[union-attr]
    csv_path = inbox / "tuwen-catalogue.csv"
    lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
    name = Path(lost.images[0]).name
    csv_path.write_text("\n".join(line for line in lines if name not in line) + "\n", encoding="utf-8-sig")
    second = build_service(config, backend_factory=backend_factory)
    second.start()
    wait_until(lambda: name in csv_path.read_text(encoding="utf-8-sig"), timeout=30)
    second.stop()
    assert list(inbox.glob("*.tuwen-tmp")) == []
    rows = csv_path.read_text(encoding="utf-8-sig").splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == [p.name for p in scans]
    assert backend_factory.backends[1].requests_answered == 0


@pytest.mark.timeout(240)
def test_kill_9_during_a_catalogued_backlog_then_restart(tmp_path: Path, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    import signal
    import sqlite3
    import subprocess
    import sys

    from tests.test_serve import REPO, _free_port, _write_config

    config = _write_config(tmp_path, _free_port(), extra="catalogue = true")
    inbox = tmp_path / "inbox"
    scans = []
    for index in range(12):
        path = inbox / f"box{index:02d}.jpg"
        path.write_bytes(scan_bytes([f"档案盒 {index}"]))
        scans.append(path)
    db = tmp_path / "data" / "tuwen.sqlite3"
    command = [sys.executable, "-m", "service.cli", "serve", "-c", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def done() -> int:
        try:
            with sqlite3.connect(db) as conn:
                return int(conn.execute("SELECT count(*) FROM jobs WHERE status='done'").fetchone()[0])
        except sqlite3.Error:
            return 0

    quiet = {"cwd": REPO, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    first = subprocess.Popen(command, **quiet)  # type: ignore[call-overload]
    try:
        wait_until(lambda: 3 <= done() < len(scans), timeout=120, interval=0.01)
    finally:
        first.kill()
        first.wait(10)
    second = subprocess.Popen(command, **quiet)  # type: ignore[call-overload]
    try:
        wait_until(lambda: done() == len(scans) and all(_sidecar(p) for p in scans), timeout=120)
        wait_until(
            lambda: len((inbox / "tuwen-catalogue.csv").read_text(encoding="utf-8-sig").splitlines()) == 13,
            timeout=30,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(40) == 0
    assert list(inbox.glob("*.tuwen-tmp")) == []
    rows = (inbox / "tuwen-catalogue.csv").read_text(encoding="utf-8-sig").splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == [p.name for p in scans]  # every row, once
