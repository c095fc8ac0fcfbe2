"""The `tuwen` command line as a user runs it: ask, batch (resumable, CSV), jobs (list, retry)."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent


def _tuwen(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args, "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[storage]\ndata_dir = "data"\n[http]\nenabled = false\n', encoding="utf-8")
    return path


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def test_ask_prints_the_answer_and_records_the_job(config: Path, tmp_path: Path, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "label.jpg"
    image.write_bytes(scan_bytes(["青花瓷瓶 明代", "Ming vase"]))
    result = _tuwen(config, "ask", str(image), "这是什么文物？")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("青花瓷瓶")  # the text read, with no banner around it
    as_json = _tuwen(config, "ask", str(image), "这是什么文物？", "--json")
    record = json.loads(as_json.stdout)
    assert record["status"] == "done" and record["question"] == "这是什么文物？"
    assert record["answer_kind"] == "ocr"
    assert record["source"] == "cli" and record["width"] == 600
    assert _rows(tmp_path / "data" / "tuwen.sqlite3", "SELECT count(*) FROM jobs WHERE source='cli'") == [
        (2,)
    ]


def test_ask_on_a_broken_file_exits_non_zero_with_a_clear_message(config: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    result = _tuwen(config, "ask", str(broken))
    assert result.returncode == 1
    assert "无法解码图片" in result.stderr and "cannot decode image" in result.stderr
    missing = _tuwen(config, "ask", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 1 and "无法读取文件" in missing.stderr


def test_batch_writes_csv_and_resumes_without_answering_twice(
    config: Path, tmp_path: Path, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "box"
    (folder / "sub").mkdir(parents=True)
    names = ["a.jpg", "b.jpg", "sub/c.jpg", "d.jpg"]
    for index, name in enumerate(names):
        (folder / name).write_bytes(scan_bytes([f"卷宗 {index} 号"]))
    (folder / "Thumbs.db").write_bytes(b"x")
    (folder / "bad.jpg").write_bytes(b"")
    db = tmp_path / "data" / "tuwen.sqlite3"

    # Interrupt the first run after it has answered something, as a user pressing Ctrl-C or a reboot would.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "batch",
            str(folder),
            "--prompt",
            "卷宗号是多少？",
            "-c",
            str(config),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: db.exists() and _safe_count(db, "SELECT count(*) FROM jobs WHERE status='done'") >= 1,
            timeout=90,
            interval=0.02,
        )
    finally:
        proc.kill()
        proc.wait()

    out = tmp_path / "results.csv"
    result = _tuwen(config, "batch", str(folder), "--prompt", "卷宗号是多少？", "--csv", str(out))
    assert result.returncode == 1, result.stderr  # bad.jpg failed, so not everything is done
    assert "done 4, failed 1, of 5" in result.stdout
    per_file = _rows(db, "SELECT file_path, count(*) FROM jobs WHERE status='done' GROUP BY file_path")
    assert sorted(count for _, count in per_file) == [1, 1, 1, 1]
    with open(out, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    assert len(rows) == 5
    by_name = {Path(row["file"]).name: row for row in rows}
    assert "卷宗 2 号" in by_name["c.jpg"]["answer"].replace("卷宗2号", "卷宗 2 号")
    assert by_name["bad.jpg"]["status"] == "failed" and "文件为空" in by_name["bad.jpg"]["error"]

    again = _tuwen(config, "batch", str(folder), "--prompt", "卷宗号是多少？")
    assert "done 4, failed 1, of 5" in again.stdout
    assert _rows(db, "SELECT count(*) FROM jobs") == [(5,)]  # nothing new was queued or answered


def _safe_count(db: Path, sql: str) -> int:
    try:
        return int(_rows(db, sql)[0][0])  # type: ignore[call-overload]
    except sqlite3.OperationalError:
        return 0


def test_batch_sidecars_option(config: Path, tmp_path: Path, scan_bytes) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "box"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(scan_bytes())
    result = _tuwen(config, "batch", str(folder), "--sidecars")
    assert result.returncode == 0, result.stderr
    assert (folder / "x.jpg.json").exists() and (folder / "x.jpg.xmp").exists()


def test_jobs_lists_and_retries_failed(config: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _tuwen(config, "ask", str(empty))
    listing = _tuwen(config, "jobs", "--status", "failed")
    assert listing.returncode == 0 and "empty.png" in listing.stdout and "文件为空" in listing.stdout
    retried = _tuwen(config, "jobs", "--retry-failed")
    assert "re-queued 1 failed job(s)" in retried.stdout
    db = tmp_path / "data" / "tuwen.sqlite3"
    assert _rows(db, "SELECT status, attempts FROM jobs") == [("queued", 0)]


def test_links_prints_kiosk_and_feed_urls_whose_tokens_open_only_those(tmp_path: Path) -> None:
    from service.http.auth import Auth, Scope

    config = tmp_path / "config.toml"
    config.write_text('[http]\nhost = "0.0.0.0"\nport = 8123\napi_key = "museum-key"\n', encoding="utf-8")
    result = _tuwen(config, "links", "--base-url", "http://192.168.1.20:8123")
    assert result.returncode == 0
    auth = Auth("museum-key")
    assert f"http://192.168.1.20:8123/kiosk?token={auth.token(Scope.KIOSK)}" in result.stdout
    assert f"http://192.168.1.20:8123/feed?token={auth.token(Scope.FEED)}" in result.stdout
    assert "museum-key" not in result.stdout
