"""Visitors' photos are deleted after `[storage] keep_uploads_days`; the history's text stays."""

from __future__ import annotations

import base64
import io
import os
import time

import httpx
from PIL import Image

from service.retention import sweep
from tests.conftest import wait_until
from tests.live import running_service


def _photo() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 30, 30)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _age(path: os.PathLike[str] | str, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_old_uploads_and_thumbnails_go_and_the_text_stays(make_config, backend_factory, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    config = make_config(storage={"keep_uploads_days": 30})
    scan = config.watch[0].path / "staff-scan.jpg"
    scan.write_bytes(scan_bytes(["馆藏扫描件"]))
    with running_service(config, backend_factory) as live:
        parts = [
            {"type": "text", "text": "这是什么？"},
            {"type": "image_url", "image_url": {"url": _photo()}},
        ]
        answered = httpx.post(
            live.base_url + "/v1/chat/completions",
            json={"model": "tuwen", "messages": [{"role": "user", "content": parts}]},
            timeout=60,
        )
        assert answered.status_code == 200
        wait_until(lambda: scan.with_name("staff-scan.jpg.json").exists())
        jobs = {job.source: job for job in live.app.store.list_jobs(limit=10)}
        api_job, folder_job = jobs["api"], jobs["watch"]
        assert httpx.get(live.base_url + f"/api/jobs/{api_job.id}/thumbnail", timeout=10).status_code == 200
        upload = api_job.images[0]
        thumbs = list((config.storage.data_dir / "thumbs").iterdir())
        _age(upload, 31)
        for thumb in thumbs:
            _age(thumb, 31)
        _age(scan, 400)  # a staff scan is never an upload, however old
        swept = sweep(config.storage.data_dir, config.storage.keep_uploads_days)
        detail = httpx.get(live.base_url + f"/api/jobs/{api_job.id}", timeout=10).json()
        thumbnail = httpx.get(live.base_url + f"/api/jobs/{api_job.id}/thumbnail", timeout=10)
        folder_thumbnail = httpx.get(live.base_url + f"/api/jobs/{folder_job.id}/thumbnail", timeout=10)
    assert swept.uploads == 1 and swept.thumbnails == len(thumbs) >= 1
    assert not os.path.exists(upload)
    assert detail["question"] == "这是什么？" and detail["answer"] == api_job.answer  # the text stays
    assert thumbnail.status_code == 404  # no picture of something no longer there
    assert scan.exists() and folder_thumbnail.status_code == 200  # rebuilt from the scan


def test_recent_and_resent_uploads_stay_and_zero_keeps_everything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from service.uploads import store_upload

    data_dir = tmp_path / "data"
    old = store_upload(data_dir, b"\x89PNG\r\n\x1a\n old photo")
    resent = store_upload(data_dir, b"\x89PNG\r\n\x1a\n resent photo")
    fresh = store_upload(data_dir, b"\x89PNG\r\n\x1a\n fresh photo")
    for stored in (old, resent):
        _age(stored.path, 45)
    store_upload(data_dir, b"\x89PNG\r\n\x1a\n resent photo")  # sent again today: in use again
    assert sweep(data_dir, 0).uploads == 0 and old.path.exists()
    assert sweep(data_dir, 30).uploads == 1
    assert not old.path.exists() and resent.path.exists() and fresh.path.exists()
