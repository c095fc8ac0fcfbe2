"""Watched folders on real files in temp folders: stability, backlog, bad files, ignores, dedup, sidecars."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from bench.render import render_text_image
from db.models import JobStatus
from service.app import App
from service.composition import build_service
from tests import documents
from tests.conftest import wait_until


def _sidecar(path: Path) -> dict[str, object] | None:
    side = path.with_name(path.name + ".json")
    return json.loads(side.read_text(encoding="utf-8")) if side.exists() else None


def _jobs_for(app: App, path: Path) -> list:  # type: ignore[type-arg]
    return [j for j in app.store.list_jobs(limit=1000) if j.file_path == str(path)]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def test_backlog_present_at_start_is_answered_with_both_sidecars(
    make_config, backend_factory, inbox, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    (inbox / "sub").mkdir()
    files = [inbox / "a.jpg", inbox / "b.png", inbox / "sub" / "c.jpg"]
    for path in files:
        path.write_bytes(scan_bytes(["民国三十年 合影", "Group photo 1941"]))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    app = build_service(make_config(), backend_factory=backend_factory)
    app.start()
    wait_until(lambda: all(_sidecar(p) for p in files))
    app.stop()
    for path in files:
        data = _sidecar(path)
        assert data is not None and data["status"] == "done"
        assert "民国三十年" in str(data["answer"])
        assert data["question"] == "请用20字以内描述图中场景、人物和时间特征"
        assert data["backend"] == "ocr" and data["width"] == 600 and data["height"] == 300
        xmp = path.with_name(path.name + ".xmp").read_text(encoding="utf-8")
        assert "民国三十年" in xmp and "dc:description" in xmp
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before[path]  # staff files untouched


def test_a_slowly_written_file_is_taken_once_when_complete(
    make_config, backend_factory, inbox, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    data = scan_bytes(["慢慢写入的扫描件"])
    app = build_service(make_config(watches=[{"stable_seconds": 1.0}]), backend_factory=backend_factory)
    app.start()
    wait_until(lambda: app.worker.alive)
    target = inbox / "slow.jpg"
    with open(target, "wb") as handle:
        for start in range(0, len(data), len(data) // 6 + 1):
            handle.write(data[start : start + len(data) // 6 + 1])
            handle.flush()
            os.fsync(handle.fileno())
            time.sleep(0.4)  # shorter than stable_seconds: never looks finished in between
    wait_until(lambda: _sidecar(target))
    time.sleep(1.5)
    app.stop()
    jobs = _jobs_for(app, target)
    assert len(jobs) == 1 and jobs[0].status == JobStatus.DONE
    assert jobs[0].file_size == len(data)
    assert "慢慢写入" in (jobs[0].answer or "")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.jpg", b"", "文件为空（0 字节）"),
        (
            "truncated.jpg",
            "half",
            "无法解码图片：文件已损坏或不完整 / cannot decode image: file is corrupt or truncated",
        ),
        ("random.png", os.urandom(4096), "不是可识别的图片格式"),
        ("notes.docx", b"PK\x03\x04 not really a document", "不是可识别的图片格式"),
    ],
)
def test_bad_files_become_failed_records_and_the_service_stays_up(  # type: ignore[no-untyped-def]
    make_config, backend_factory, inbox, scan_bytes, name, content, expected
) -> None:
    good_bytes = scan_bytes(["好的扫描件"])
    bad = inbox / name
    bad.write_bytes(good_bytes[: len(good_bytes) // 2] if content == "half" else content)
    app = build_service(make_config(), backend_factory=backend_factory)
    app.start()
    wait_until(lambda: _sidecar(bad))
    good = inbox / "good.jpg"
    good.write_bytes(good_bytes)
    wait_until(lambda: _sidecar(good))
    app.stop()
    failed = _sidecar(bad)
    assert failed is not None and failed["status"] == "failed" and expected in str(failed["error"])
    assert not bad.with_name(bad.name + ".xmp").exists()
    assert _sidecar(good)["status"] == "done"  # type: ignore[index]
    assert bad.exists()  # never moved or deleted


@pytest.mark.timeout(120)
def test_pdfs_phone_photos_and_pipes_in_a_watched_folder(make_config, backend_factory, inbox) -> None:  # type: ignore[no-untyped-def]
    os.mkfifo(inbox / "a-pipe.jpg")  # sorted first: it must not block the scan of the others
    letter = documents.scan_pdf(inbox / "letter.pdf", [["第一页 来信"], ["第二页 回信"], ["第三页 信封"]])
    locked = documents.encrypted_pdf(inbox / "locked.pdf", user_password="pw")
    upright = render_text_image(["手机拍的档案", "Phone photo"], size=(600, 300), font_size=48)
    phone = inbox / "IMG_0042.HEIC"  # stored on its side; EXIF orientation 8 (iPhones write it as `irot`)
    phone.write_bytes(documents.photo_bytes(upright.transpose(Image.Transpose.ROTATE_270), "HEIF", 8))
    app = build_service(make_config(images={"max_pages": 2}), backend_factory=backend_factory)
    app.start()
    wait_until(lambda: _sidecar(letter) and _sidecar(locked) and _sidecar(phone), timeout=90)
    app.stop()
    letter_record, locked_record, phone_record = _sidecar(letter), _sidecar(locked), _sidecar(phone)
    assert letter_record is not None and letter_record["status"] == "done" and letter_record["pages"] == 2
    assert "第一页" in str(letter_record["answer"]) and "第二页" in str(letter_record["answer"])
    assert "第三页" not in str(letter_record["answer"])  # [images] max_pages
    assert locked_record is not None and locked_record["status"] == "failed"
    assert "设有打开密码" in str(locked_record["error"])
    assert phone_record is not None and phone_record["status"] == "done"
    assert (phone_record["width"], phone_record["height"]) == (600, 300)
    assert "手机拍的档案" in str(phone_record["answer"])
    assert _sidecar(inbox / "a-pipe.jpg") is None and _jobs_for(app, inbox / "a-pipe.jpg") == []


def test_litter_and_our_own_files_are_ignored(make_config, backend_factory, inbox, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    data = scan_bytes()
    litter = [
        inbox / ".DS_Store",
        inbox / "._scan.jpg",
        inbox / "Thumbs.db",
        inbox / "desktop.ini",
        inbox / "scan.jpg.part",
        inbox / "scan.jpg.crdownload",
        inbox / "~$report.jpg",
        inbox / "@eaDir" / "scan.jpg",
        inbox / "__MACOSX" / "scan.jpg",
        inbox / "old.jpg.xmp",
    ]
    for path in litter:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    real = inbox / "real.jpg"
    real.write_bytes(data)
    app = build_service(make_config(watches=[{"ignore": ["*.raw"]}]), backend_factory=backend_factory)
    (inbox / "camera.raw").write_bytes(data)
    app.start()
    wait_until(lambda: _sidecar(real))
    time.sleep(1.0)
    app.stop()
    jobs = app.store.list_jobs(limit=100)
    assert [Path(j.file_path).name for j in jobs] == ["real.jpg"]  # type: ignore[arg-type]
    # Writing our own sidecars did not create jobs either.
    assert app.store.status_counts() == {"done": 1}


def test_a_touched_scan_keeps_one_record_and_its_sidecars_byte_for_byte(
    make_config, backend_factory, inbox, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    scan = inbox / "photo.jpg"
    scan.write_bytes(scan_bytes(["同一张照片"]))
    app = build_service(make_config(), backend_factory=backend_factory)
    app.start()
    wait_until(lambda: _sidecar(scan))
    before = {p.name: p.read_bytes() for p in inbox.iterdir()}
    os.utime(scan, (time.time() + 5, time.time() + 5))  # touched: a sync tool, a backup, a careless click
    app.sources[0].request_scan()  # type: ignore[attr-defined]
    time.sleep(2.0)
    app.stop()
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == before
    assert len(_jobs_for(app, scan)) == 1
    assert backend_factory.backends[0].requests_answered == 1


def test_a_renamed_scan_takes_its_record_and_sidecars_along(
    make_config, backend_factory, inbox, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    original = inbox / "photo.jpg"
    original.write_bytes(scan_bytes(["同一张照片"]))
    app = build_service(make_config(), backend_factory=backend_factory)
    app.start()
    first = wait_until(lambda: _sidecar(original))
    renamed = inbox / "photo-renamed.jpg"
    original.rename(renamed)
    moved = wait_until(lambda: _sidecar(renamed))
    wait_until(lambda: not original.with_name("photo.jpg.json").exists())
    app.stop()
    assert sorted(p.name for p in inbox.iterdir()) == [
        "photo-renamed.jpg",
        "photo-renamed.jpg.json",
        "photo-renamed.jpg.xmp",
    ]
    assert moved["answer"] == first["answer"] and moved["job_id"] == first["job_id"]  # type: ignore[index]
    jobs = app.store.list_jobs(limit=10)
    assert [j.file_path for j in jobs] == [str(renamed)]
    assert backend_factory.backends[0].requests_answered == 1


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_a_staff_xmp_follows_a_renamed_scan_with_what_staff_wrote(
    make_config, backend_factory, inbox, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    original = inbox / "letter.jpg"
    original.write_bytes(scan_bytes(["家书一封"]))
    # A cataloguer's XMP, written by exiftool before tuwen ever saw the scan.
    staff_xmp = inbox / "letter.jpg.xmp"
    subprocess.run(
        ["exiftool", "-q", "-o", str(staff_xmp), "-XMP-dc:Title=王氏家书", "-XMP-xmp:Rating=4"], check=True
    )
    app = build_service(make_config(), backend_factory=backend_factory)
    app.start()
    wait_until(lambda: _sidecar(original))
    renamed = inbox / "letter-1952.jpg"
    original.rename(renamed)
    wait_until(lambda: _sidecar(renamed))
    wait_until(lambda: not (inbox / "letter.jpg.json").exists())
    app.stop()
    assert not staff_xmp.exists()  # renamed with the scan, not left behind and not deleted
    read = subprocess.run(
        ["exiftool", "-j", "-XMP-dc:Title", "-XMP-xmp:Rating", str(inbox / "letter-1952.jpg.xmp")],
        check=True,
        capture_output=True,
        text=True,
    )
    (tags,) = json.loads(read.stdout)
    assert (tags["Title"], tags["Rating"]) == ("王氏家书", 4)


def test_a_changed_prompt_answers_again(make_config, backend_factory, inbox, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    scan = inbox / "letter.jpg"
    scan.write_bytes(scan_bytes(["家书一封"]))
    first = build_service(make_config(), backend_factory=backend_factory)
    first.start()
    wait_until(lambda: _sidecar(scan))
    first.stop()
    config = make_config(watches=[{"prompt": "这封信是谁写的？"}])
    second = build_service(config, backend_factory=backend_factory)
    second.start()
    os.utime(scan, (time.time() + 5, time.time() + 5))  # dropped again
    wait_until(lambda: _sidecar(scan)["question"] == "这封信是谁写的？")  # type: ignore[index]
    second.stop()
    assert backend_factory.backends[1].requests_answered == 1


def test_output_dir_mirrors_the_tree_for_read_only_shares(
    make_config, backend_factory, inbox, tmp_path, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    (inbox / "1950s").mkdir()
    scan = inbox / "1950s" / "street.jpg"
    scan.write_bytes(scan_bytes(["南京路 1956"]))
    mirror = tmp_path / "sidecars"
    app = build_service(
        make_config(watches=[{"output_dir": mirror, "catalogue": True}]), backend_factory=backend_factory
    )
    app.start()
    wait_until(lambda: (mirror / "1950s" / "street.jpg.json").exists())
    app.stop()
    assert sorted(p.name for p in (inbox / "1950s").iterdir()) == ["street.jpg"]
    assert (mirror / "1950s" / "street.jpg.xmp").exists()
    catalogue = (mirror / "tuwen-catalogue.csv").read_bytes()
    assert catalogue.startswith(b"\xef\xbb\xbf") and "南京路".encode() in catalogue


def test_polling_mode_for_network_shares(make_config, backend_factory, inbox, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    config = make_config(watches=[{"polling": True, "poll_interval_seconds": 0.3}])
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    wait_until(lambda: app.worker.alive)
    time.sleep(0.5)
    scan = inbox / "from-nas.jpg"
    scan.write_bytes(scan_bytes(["共享文件夹"]))
    wait_until(lambda: _sidecar(scan))
    observer = type(app.sources[0]._observer).__name__  # type: ignore[attr-defined]
    app.stop()
    assert observer == "PollingObserver"


def test_missing_sidecar_of_a_done_job_is_rewritten_at_start(
    make_config, backend_factory, inbox, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    scan = inbox / "deed.jpg"
    scan.write_bytes(scan_bytes(["地契"]))
    config = make_config()
    first = build_service(config, backend_factory=backend_factory)
    first.start()
    wait_until(lambda: _sidecar(scan))
    first.stop()
    answer = _sidecar(scan)["answer"]  # type: ignore[index]
    scan.with_name("deed.jpg.json").unlink()
    scan.with_name("deed.jpg.xmp").unlink()
    second = build_service(config, backend_factory=backend_factory)
    second.start()
    wait_until(lambda: _sidecar(scan))
    second.stop()
    assert _sidecar(scan)["answer"] == answer  # type: ignore[index]
    assert scan.with_name("deed.jpg.xmp").exists()
    assert backend_factory.backends[1].requests_answered == 0
    assert second.store.status_counts() == {"done": 1}


def test_a_watch_folder_that_appears_later_is_picked_up(
    make_config, backend_factory, tmp_path, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    later = tmp_path / "mounted-later"
    config = make_config(watches=[{"path": later, "rescan_seconds": 0.5}])
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    time.sleep(0.5)
    later.mkdir()
    scan = later / "x.jpg"
    scan.write_bytes(scan_bytes())
    wait_until(lambda: _sidecar(scan), timeout=40)
    app.stop()


def test_a_changed_model_answers_again(make_config, backend_factory, inbox, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    scan = inbox / "map.jpg"
    scan.write_bytes(scan_bytes(["老地图"]))
    first = build_service(make_config(), backend_factory=backend_factory)
    first.start()
    wait_until(lambda: _sidecar(scan))
    first.stop()
    backend_factory.prepare = lambda backend: setattr(backend.inner, "model_version", "upgraded")
    second = build_service(make_config(), backend_factory=backend_factory)
    second.start()
    os.utime(scan, (time.time() + 5, time.time() + 5))
    wait_until(lambda: _sidecar(scan)["model_version"] == "upgraded")  # type: ignore[index]
    second.stop()
    assert backend_factory.backends[1].requests_answered == 1
