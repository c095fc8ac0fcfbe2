"""A database that briefly cannot be written is waited out: nothing dropped meanwhile is lost.

Disk full is real: the data folder sits on a small tmpfs that the test fills (skipped where the machine may
not mount one). Read-only is SQLite's own: `PRAGMA query_only` on every connection makes SQLite refuse
writes with SQLITE_READONLY, exactly what a database remounted read-only gives (a live filesystem cannot be
remounted read-only under open files here).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from service.app import App
from tests.conftest import wait_until
from tests.live import LiveService, running_service


def _sidecar(path: Path) -> dict[str, Any] | None:
    side = path.with_name(path.name + ".json")
    return json.loads(side.read_text(encoding="utf-8")) if side.exists() else None


@contextlib.contextmanager
def _small_disk(where: Path, size: str = "8m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def _read_only(app: App) -> Iterator[None]:
    """Every database connection refuses writes (SQLITE_READONLY) until the block ends."""

    def query_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")

    engine = app.store.engine
    event.listen(engine, "connect", query_only)
    engine.dispose()
    try:
        yield
    finally:
        event.remove(engine, "connect", query_only)
        engine.dispose()


def _chat(live: LiveService, image: bytes) -> httpx.Response:
    parts = [
        {"type": "text", "text": "写了什么？"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(image).decode()},
        },
    ]
    return httpx.post(
        live.base_url + "/v1/chat/completions",
        json={"model": "tuwen", "messages": [{"role": "user", "content": parts}]},
        timeout=60,
    )


def test_a_full_disk_is_reported_plainly_and_waited_out(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes, tmp_path, caplog
) -> None:
    with _small_disk(tmp_path / "small-disk") as disk:
        config = make_config(storage={"data_dir": disk / "data"}, http={"enabled": True})
        inbox = config.watch[0].path  # on the ordinary disk: the scans and their sidecars have room
        with caplog.at_level(logging.INFO), running_service(config, backend_factory) as live:
            with live.app.store.engine.connect() as conn:  # an empty WAL, so the next write must grow it
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            filler = _fill(disk)
            scans = [inbox / f"during-{n}.jpg" for n in range(3)]
            for number, scan in enumerate(scans):
                scan.write_bytes(scan_bytes([f"磁盘满时放入 {number}"]))
            health = wait_until(
                lambda: (r := httpx.get(live.base_url + "/health", timeout=5)).status_code == 503 and r,
                timeout=60,
            )
            refused = _chat(live, scan_bytes(["聊天"]))
            filler.unlink()  # someone frees space
            for scan in scans:
                wait_until(lambda scan=scan: _sidecar(scan), timeout=90)
            recovered = wait_until(
                lambda: (r := httpx.get(live.base_url + "/health", timeout=5)).status_code == 200 and r,
                timeout=60,
            )
            answered = _chat(live, scan_bytes(["聊天"]))
    body = health.json()  # type: ignore[attr-defined]
    assert body["storage"]["state"] == "disk_full" and "磁盘已满" in body["storage"]["error"]
    assert refused.status_code == 507 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "storage_disk_full"
    assert "disk is full" in refused.json()["error"]["message"]
    assert all(_sidecar(scan)["status"] == "done" for scan in scans)  # type: ignore[index]
    assert recovered.json()["storage"]["state"] == "ok"  # type: ignore[attr-defined]
    assert answered.status_code == 200
    said = [r.getMessage() for r in caplog.records if "disk is full" in r.getMessage()]
    assert len(said) == 1  # "unavailable" once, not once per attempt
    assert any("writable again" in r.getMessage() for r in caplog.records)


def test_a_read_only_database_pauses_the_worker_and_watcher_and_loses_nothing(  # type: ignore[no-untyped-def]
    make_config, backend_factory, scan_bytes
) -> None:
    config = make_config(http={"enabled": True})
    inbox = config.watch[0].path
    with running_service(config, backend_factory) as live:
        before = inbox / "before.jpg"
        before.write_bytes(scan_bytes(["只读之前"]))
        wait_until(lambda: _sidecar(before), timeout=60)
        backend_factory.backends[0].delay = 1.5  # the next answer is in the worker's hand when writes stop
        during = inbox / "during.jpg"
        during.write_bytes(scan_bytes(["只读期间"]))
        wait_until(lambda: live.app.store.status_counts().get("running") == 1, timeout=60)
        with _read_only(live.app):
            dropped = inbox / "dropped-while-read-only.jpg"
            dropped.write_bytes(scan_bytes(["只读时放入"]))
            health = wait_until(
                lambda: (r := httpx.get(live.base_url + "/health", timeout=5)).status_code == 503 and r,
                timeout=60,
            )
            refused = _chat(live, scan_bytes(["聊天"]))
        for scan in (during, dropped):
            wait_until(lambda scan=scan: _sidecar(scan), timeout=90)
    assert health.json()["storage"]["state"] == "read_only"  # type: ignore[attr-defined]
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "storage_read_only"
    assert _sidecar(during)["status"] == "done"  # type: ignore[index]  # the answer in hand was kept
    assert _sidecar(dropped)["status"] == "done"  # type: ignore[index]


def test_a_read_only_data_folder_at_start_is_one_plain_paragraph(tmp_path: Path) -> None:
    import sys

    from tests.test_serve import REPO, _free_port, _write_config

    config = _write_config(tmp_path, _free_port())
    (tmp_path / "data").mkdir()
    view = tmp_path / "data-ro"
    view.mkdir()
    bound = subprocess.run(["mount", "--bind", str(tmp_path / "data"), str(view)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        text = config.read_text(encoding="utf-8").replace('data_dir = "data"', 'data_dir = "data-ro"')
        config.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "-c", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)
    assert proc.returncode == 1
    assert "Read-only file system" in proc.stderr and "[storage] data_dir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_upload_to_a_full_disk_is_507_not_500(make_config, backend_factory, tmp_path, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    with _small_disk(tmp_path / "small-disk", size="4m") as disk:
        config = make_config(storage={"data_dir": disk / "data"}, http={"enabled": True})
        with running_service(config, backend_factory) as live:
            filler = _fill(disk)
            photo = io.BytesIO()
            from PIL import Image

            Image.effect_noise((400, 300), 80).convert("RGB").save(photo, "PNG")
            refused = _chat(live, photo.getvalue())
            filler.unlink()
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"]["code"] == "storage_disk_full"
