"""`tuwen backup` while a real `tuwen serve` writes, its failure messages, and `tuwen health`."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from service.backup import backup_database
from service.config import Config, HttpConfig
from service.healthcheck import health_url
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent


def _tuwen(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args, "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(folder: Path, port: int) -> Path:
    (folder / "inbox").mkdir(exist_ok=True)
    path = folder / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "data"\n[http]\nport = {port}\n'
        '[[watch]]\npath = "inbox"\nname = "inbox"\nstable_seconds = 0.3\n',
        encoding="utf-8",
    )
    return path


def _counts(copy: Path) -> tuple[str, str, int, int]:
    with closing(sqlite3.connect(copy)) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        done = conn.execute("SELECT count(*) FROM jobs WHERE status = 'done'").fetchone()[0]
    return integrity, journal, int(jobs), int(done)


def test_backups_taken_while_the_service_writes_are_whole_and_only_grow(
    tmp_path: Path, scan_bytes: Callable[..., bytes]
) -> None:
    port = _free_port()
    config = _config(tmp_path, port)
    log = (tmp_path / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "-c", str(config)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    backups = tmp_path / "backups"
    backups.mkdir()
    copies: list[Path] = []
    scans: list[Path] = []
    try:
        wait_until(lambda: _health_ok(port), timeout=60)
        healthy = _tuwen(config, "health")
        assert healthy.returncode == 0 and f":{port}/health" in healthy.stdout
        for round_number in range(8):
            for index in range(2):
                scan = tmp_path / "inbox" / f"scan{round_number}{index}.jpg"
                scan.write_bytes(
                    scan_bytes([f"档案 第{round_number}{index}号", f"Box {round_number}{index}"])
                )
                scans.append(scan)
            copy = backups / f"copy-{round_number:02d}.sqlite3"
            result = _tuwen(config, "backup", str(copy))
            assert result.returncode == 0, result.stderr
            assert str(copy) in result.stdout and "jobs: " in result.stdout
            copies.append(copy)
        wait_until(lambda: all(s.with_name(s.name + ".json").exists() for s in scans), timeout=120)
        last = _tuwen(config, "backup", f"{backups}/latest/")  # a folder spelt with a slash: created
        assert last.returncode == 0, last.stderr
        copies += sorted((backups / "latest").glob("tuwen-*.sqlite3"))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0
    measured = [_counts(copy) for copy in copies]
    assert len(measured) == 9
    assert {(integrity, journal) for integrity, journal, _, _ in measured} == {("ok", "delete")}
    jobs = [count for _, _, count, _ in measured]
    done = [count for _, _, _, count in measured]
    assert len(set(jobs)) >= 3  # the copies caught the history at different moments of its writing
    assert jobs == sorted(jobs) and done == sorted(done)  # a later copy never has fewer rows
    assert jobs[-1] == done[-1] == len(scans)
    assert not list(backups.rglob("*-wal")) and not list(backups.rglob("*.tuwen-tmp"))
    stopped = _tuwen(config, "health")
    assert stopped.returncode == 1 and "cannot reach" in stopped.stderr and "无法连接" in stopped.stderr


def _health_ok(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _database(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS jobs(id INTEGER PRIMARY KEY, status TEXT)")
        conn.executemany("INSERT INTO jobs(status) VALUES (?)", [("done",)] * 3)
    return path


def _corrupt_index(path: Path) -> None:
    # The index's definition no longer matches its entries: the file opens and copies, integrity_check fails.
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE labels(x TEXT)")
        conn.executemany("INSERT INTO labels VALUES (?)", [(f"label {i:03d}",) for i in range(50)])
        conn.execute("CREATE INDEX ix ON labels(x)")
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX ix ON labels(x DESC)' WHERE name = 'ix'")


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("no_database", ("没有找到数据库", "no database at")),
        ("destination_under_a_file", ("无法写入备份", "cannot write the backup")),
        ("destination_is_the_database", ("就是数据库本身", "the database itself")),
        ("copy_fails_integrity_check", ("完整性检查", "integrity check")),
    ],
)
def test_a_backup_that_cannot_be_made_says_why_and_leaves_nothing(
    tmp_path: Path, problem: str, expected: tuple[str, str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[storage]\ndata_dir = "data"\n[http]\nenabled = false\n', encoding="utf-8")
    database = tmp_path / "data" / "tuwen.sqlite3"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file", encoding="utf-8")
    dest = {
        "no_database": tmp_path / "copy.sqlite3",
        "destination_under_a_file": blocker / "copy.sqlite3",
        "destination_is_the_database": database,
        "copy_fails_integrity_check": tmp_path / "copy.sqlite3",
    }[problem]
    if problem != "no_database":
        _database(database)
    if problem == "copy_fails_integrity_check":
        _corrupt_index(database)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = _tuwen(config, "backup", str(dest))
    assert result.returncode == 1
    assert all(part in result.stderr for part in expected), result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no copy, no temporary file, no new db


def test_a_folder_gets_a_new_time_stamped_copy_each_time(tmp_path: Path) -> None:
    database = _database(tmp_path / "data" / "tuwen.sqlite3")
    folder = tmp_path / "backups"
    folder.mkdir()
    moment = datetime(2026, 11, 27, 10, 0, 0)
    first = backup_database(database, folder, now=moment)
    second = backup_database(database, folder, now=moment)
    assert (first.path.name, second.path.name) == (
        "tuwen-20261127-100000.sqlite3",
        "tuwen-20261127-100000-2.sqlite3",
    )
    assert first.counts == second.counts == {"jobs": 3}
    replaced = backup_database(database, first.path)  # a file given by name is replaced, like cp
    assert replaced.path == first.path and replaced.counts == {"jobs": 3}


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080/health"),
        ("127.0.0.1", "http://127.0.0.1:8080/health"),
        ("192.168.1.20", "http://192.168.1.20:8080/health"),
        ("::", "http://[::1]:8080/health"),
        ("::1", "http://[::1]:8080/health"),
    ],
)
def test_health_asks_where_the_service_listens(host: str, url: str) -> None:
    assert health_url(Config(http=HttpConfig(host=host))) == url


def test_health_without_a_web_server_fails_with_a_plain_message(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[http]\nenabled = false\n", encoding="utf-8")
    result = _tuwen(config, "health")
    assert result.returncode == 1 and "[http] enabled = false" in result.stderr
