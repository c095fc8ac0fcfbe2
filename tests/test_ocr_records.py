"""What the reader found reaches the record: real scans through a running service into sidecars, ALTO,
the history API, the review sample and thumbnails.

Real RapidOCR, real PDFs (fpdf2 text layers, PIL scanner PDFs), real files in a watched folder."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from pydantic import SecretStr

from bench.render import render_text_image
from db.history import sample_for_review
from db.models import JobStatus
from service.composition import build_service
from service.thumbnails import thumbnail_bytes
from tests import documents
from tests.conftest import wait_until
from tests.live import running_service

ALTO = "{http://www.loc.gov/standards/alto/ns-v4#}"
LINES = ["县政府布告 第十七号", "民国三十年五月 张三"]


def _sidecar(path: Path) -> dict[str, Any] | None:
    side = path.with_name(path.name + ".json")
    return json.loads(side.read_text(encoding="utf-8")) if side.exists() else None


def _answered(
    make_config: Any, backend_factory: Any, files: dict[str, bytes], **watch: Any
) -> dict[str, Any]:
    """Drop `files` into a watched folder of a real service; the sidecar of each once all are written."""
    config = make_config([watch])
    inbox = config.watch[0].path
    paths = []
    for name, data in files.items():
        (inbox / name).write_bytes(data)
        paths.append(inbox / name)
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    try:
        wait_until(lambda: all(_sidecar(p) for p in paths), timeout=90)
    finally:
        app.stop()
    return {p.name: _sidecar(p) for p in paths}


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_lines_boxes_and_confidence_reach_the_sidecar_and_the_alto_file(
    make_config: Any, backend_factory: Any
) -> None:
    scan = render_text_image(LINES, size=(900, 260), font_size=48)
    data = _answered(make_config, backend_factory, {"notice.jpg": _jpeg(scan)}, alto=True)["notice.jpg"]
    assert data["status"] == "done" and data["needs_review"] is False and data["rotation"] == 0
    (page,) = data["ocr_lines"]
    texts = [line["text"] for line in page["lines"]]
    assert "".join(texts).replace(" ", "") == "".join(LINES).replace(" ", "")
    for line in page["lines"]:
        assert len(line["box"]) == 4 and 0.5 < line["confidence"] <= 1.0
    inbox = make_config().watch[0].path
    alto = ET.fromstring((inbox / "notice.jpg.alto.xml").read_bytes())
    strings = [s.get("CONTENT") for s in alto.iter(f"{ALTO}String")]
    assert "".join(strings or []).replace(" ", "") == "".join(LINES).replace(" ", "")
    assert alto.find(f"{ALTO}Description/{ALTO}sourceImageInformation/{ALTO}fileName").text == "notice.jpg"
    # The ALTO file is ours, like the sidecars: it never becomes a job of its own.
    assert not (inbox / "notice.jpg.alto.xml.json").exists()


def test_without_alto_in_the_watch_no_alto_file_is_written(make_config: Any, backend_factory: Any) -> None:
    scan = render_text_image(LINES, size=(900, 260), font_size=48)
    _answered(make_config, backend_factory, {"plain.jpg": _jpeg(scan)})
    assert not (make_config().watch[0].path / "plain.jpg.alto.xml").exists()


def test_a_pdf_text_layer_is_used_instead_of_pixels_and_the_record_says_so(
    make_config: Any, backend_factory: Any, tmp_path: Path
) -> None:
    # Page 1 has a real text layer; page 2's is a few characters (under MIN_TEXT_CHARS), so it is read.
    pdf = documents.text_pdf(tmp_path / "memo.pdf", [["Budget 2026: 1,284,000 yuan"], ["Page 2"]])
    data = _answered(make_config, backend_factory, {"memo.pdf": pdf.read_bytes()})["memo.pdf"]
    assert "Budget 2026: 1,284,000 yuan" in data["answer"] and "Page 2" in data["answer"]
    first, second = data["ocr_lines"]
    assert (first["source"], first["reads"], first["lines"]) == ("text_layer", 0, [])
    assert second["source"] == "ocr" and second["reads"] >= 1 and second["lines"]
    (note,) = [n for n in data.get("notes", []) if n["code"] == "ocr_pdf_text_layer"]
    assert note["params"] == {"pages": "1"} and "PDF" in note["message"]


def test_pages_over_max_pages_are_named_in_the_sidecar(
    make_config: Any, backend_factory: Any, tmp_path: Path
) -> None:
    pdf = documents.text_pdf(tmp_path / "long.pdf", [[f"page {n}"] for n in range(1, 6)])
    config_images = {"max_pages": 2}
    config = make_config([{}], images=config_images)
    inbox = config.watch[0].path
    (inbox / "long.pdf").write_bytes(pdf.read_bytes())
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    try:
        wait_until(lambda: _sidecar(inbox / "long.pdf"), timeout=60)
    finally:
        app.stop()
    data = _sidecar(inbox / "long.pdf")
    assert data is not None and data["pages"] == 2
    (note,) = [n for n in data.get("notes", []) if n["code"] == "pages_dropped"]
    assert note["params"] == {"total": 5, "used": 2, "pages": "3-5"}
    assert "3-5" in note["message"] and "max_pages" in note["message"]


def test_a_turned_scan_records_its_rotation_and_its_thumbnail_is_upright(
    make_config: Any, backend_factory: Any
) -> None:
    upright = render_text_image(
        ["县政府布告 第十七号", "本县各乡镇一律遵照", "民国三十年五月 张三", "此布 第二页见后"],
        size=(900, 420),
        font_size=44,
    )
    turned = upright.rotate(90, expand=True)  # the scanner fed it sideways: text runs bottom to top
    config = make_config([{}])
    inbox = config.watch[0].path
    (inbox / "sideways.jpg").write_bytes(_jpeg(turned))
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    try:
        wait_until(lambda: _sidecar(inbox / "sideways.jpg"), timeout=60)
        data = _sidecar(inbox / "sideways.jpg")
        assert data is not None and data["rotation"] == 90
        assert "县政府布告" in data["answer"]
        assert any(
            n["code"] == "ocr_rotated" and n["params"] == {"degrees": 90} for n in data.get("notes", [])
        )
        job = next(j for j in app.store.list_jobs(limit=10) if j.file_path and "sideways" in j.file_path)
        thumb = thumbnail_bytes(job, config.storage.data_dir, config.images)
    finally:
        app.stop()
    assert thumb is not None
    shown = Image.open(io.BytesIO(thumb))
    assert shown.width > shown.height  # upright again: the stored scan is taller than wide


def test_review_confidence_decides_which_pages_are_flagged_and_the_api_says_so(
    make_config: Any, backend_factory: Any
) -> None:
    scan = render_text_image(LINES, size=(900, 260), font_size=48)
    config = make_config([{}], ocr={"review_confidence": 1.0}, http={"api_key": SecretStr("k" * 32)})
    inbox = config.watch[0].path
    (inbox / "strict.jpg").write_bytes(_jpeg(scan))
    with running_service(config, backend_factory) as live:
        wait_until(lambda: _sidecar(inbox / "strict.jpg"), timeout=60)
        headers = {"Authorization": "Bearer " + "k" * 32}
        items = httpx.get(f"{live.base_url}/api/jobs", headers=headers, timeout=10).json()["items"]
    data = _sidecar(inbox / "strict.jpg")
    # No line is read with confidence 1.0, so at a threshold of 1.0 every page needs review.
    assert data is not None and data["needs_review"] is True
    assert any(n["code"] == "ocr_needs_review" for n in data.get("notes", []))
    (item,) = [i for i in items if i["file_name"] == "strict.jpg"]
    assert item["needs_review"] is True and any("核对" in note for note in item["notes"])


def test_the_review_sample_takes_flagged_pages_first(make_config: Any, backend_factory: Any) -> None:
    config = make_config([{}])
    app = build_service(config, backend_factory=backend_factory)
    store = app.store
    ids = []
    for n in range(12):
        job = store.add_job(
            uid=f"{n:032x}", source="api", question="q", prompt_hash="p", images=[], status=JobStatus.DONE
        )
        ids.append(job.id)
    flagged = set(ids[3:6])
    for job_id in flagged:
        store.finish(job_id, status=JobStatus.DONE, needs_review=1)
    for _ in range(5):  # random order otherwise: the flagged three lead every time
        sample = sample_for_review(store, 4)
        assert {job.id for job in sample[:3]} == flagged and sample[3].id not in flagged
    store.close()


def test_a_threshold_of_zero_flags_nothing(make_config: Any, backend_factory: Any) -> None:
    scan = render_text_image(["模糊的字 faint words"], size=(700, 160), font_size=40)
    config = make_config([{}], ocr={"review_confidence": 0.0})
    data = _answered_with(config, backend_factory, "faint.jpg", _jpeg(scan))
    assert data["needs_review"] is False and not any(
        n["code"] == "ocr_needs_review" for n in data.get("notes", [])
    )


def _answered_with(config: Any, backend_factory: Any, name: str, data: bytes) -> dict[str, Any]:
    inbox = config.watch[0].path
    (inbox / name).write_bytes(data)
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    try:
        wait_until(lambda: _sidecar(inbox / name), timeout=60)
    finally:
        app.stop()
    result = _sidecar(inbox / name)
    assert result is not None
    return result
