"""The tiny random GLM-4V through the whole spine: folder → queue → batched generation → sidecars; CLI ask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from service.composition import build_service
from service.config import ModelConfig
from service.events import Event, Priority
from tests import documents
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent


def test_folder_backlog_is_batched_through_the_transformers_backend(
    make_config, tiny_glm_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    config = make_config()
    config.model = ModelConfig(backend="transformers", path=str(tiny_glm_dir), max_new_tokens=8, batch_size=4)
    inbox = config.watch[0].path
    colours = ["red", "green", "blue"]
    for index, colour in enumerate(colours):
        Image.new("RGB", (200 + 40 * index, 160), colour).save(inbox / f"{colour}.png")
    tiff = inbox / "pages.tif"
    pages = [Image.new("RGB", (120, 90), c) for c in ("white", "black")]
    pages[0].save(tiff, save_all=True, append_images=pages[1:])
    app = build_service(config)
    app.start()
    sidecars = [inbox / f"{c}.png.json" for c in colours] + [inbox / "pages.tif.json"]
    wait_until(lambda: all(p.exists() for p in sidecars), timeout=120)
    pieces: list[str] = []
    interactive = app.queue.submit(
        Event(
            source="api",
            question="这是什么颜色？",
            images=(str(inbox / "red.png"),),
            priority=Priority.INTERACTIVE,
        ),
        on_text=pieces.append,
    )
    streamed = app.queue.result(interactive.uid).result(timeout=60)
    app.stop()
    for path in sidecars:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["status"] == "done" and data["backend"] == "transformers"
        assert data["model"] == str(tiny_glm_dir) and len(data["model_version"]) == 12
    tiff_record = json.loads((inbox / "pages.tif.json").read_text(encoding="utf-8"))
    assert tiff_record["pages"] == 2
    assert "[第 1 页 / page 1]" in tiff_record["answer"] and "[第 2 页 / page 2]" in tiff_record["answer"]
    assert streamed.status == "done" and "".join(pieces) == streamed.answer
    assert (streamed.prompt_tokens or 0) > 0 and (streamed.completion_tokens or 0) > 0


def test_cli_ask_with_the_tiny_glm_checkpoint(tiny_glm_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[model]\nbackend = "transformers"\npath = "{tiny_glm_dir}"\nmax_new_tokens = 6\n'
        '[storage]\ndata_dir = "data"\n[http]\nenabled = false\n',
        encoding="utf-8",
    )
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (320, 240), "orange").save(image)
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "ask", str(image), "描述这张图", "--json", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "done" and record["backend"] == "transformers"
    assert 0 < record["completion_tokens"] <= 6


def test_ocr_runs_as_an_extra_step_beside_the_model(make_config, tiny_glm_dir, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    config = make_config(watches=[])
    config.model = ModelConfig(
        backend="transformers", path=str(tiny_glm_dir), max_new_tokens=4, ocr_step=True
    )
    image = config.storage.data_dir.parent / "label.jpg"
    image.write_bytes(scan_bytes(["展品说明 青铜鼎"]))
    app = build_service(config)
    app.start()
    job = app.queue.submit(Event(source="cli", question="这是什么？", images=(str(image),)))
    done = app.queue.result(job.uid).result(timeout=120)
    app.stop()
    assert done.backend == "transformers" and done.status == "done"
    assert "青铜鼎" in (done.ocr_text or "")
    assert done.ocr_lines and done.ocr_lines[0]["source"] == "ocr" and done.ocr_lines[0]["lines"]


def test_the_ocr_step_takes_a_pdf_text_layer_as_it_is(make_config, tiny_glm_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = make_config(watches=[])
    config.model = ModelConfig(
        backend="transformers", path=str(tiny_glm_dir), max_new_tokens=4, ocr_step=True
    )
    pdf = documents.text_pdf(tmp_path / "catalogue.pdf", [["展品说明：青铜鼎，西周，高 42 厘米"]])
    app = build_service(config)
    app.start()
    job = app.queue.submit(Event(source="cli", question="这是什么？", images=(str(pdf),)))
    done = app.queue.result(job.uid).result(timeout=120)
    app.stop()
    assert done.status == "done" and done.ocr_text == "展品说明：青铜鼎，西周，高 42 厘米"
    assert done.ocr_lines and done.ocr_lines[0]["source"] == "text_layer"
    assert [note["code"] for note in done.notes or []] == ["ocr_pdf_text_layer"]
