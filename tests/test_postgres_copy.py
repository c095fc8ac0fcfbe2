"""`tuwen db copy --to URL` as a user runs it: SQLite to a real PostgreSQL and back, counts checked, a
non-empty target refused; and `[storage] database_url` checked when the config is loaded."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from db.history import search_jobs
from db.models import JobStatus
from db.sessions import SessionStore
from db.store import Store
from service.events import Event
from service.queue import JobQueue

REPO = Path(__file__).resolve().parent.parent
TABLES = ("jobs", "files", "nodes", "sessions")


def tuwen(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args, "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def write_config(path: Path, database_url: str = "") -> Path:
    path.write_text(
        f'[storage]\ndata_dir = "data"\ndatabase_url = "{database_url}"\n[http]\nenabled = false\n',
        encoding="utf-8",
    )
    return path


def history(store: Store, n: int) -> list[int]:
    """n answered jobs (traditional text, a NUL-free answer each) written by the real queue and store."""
    queue = JobQueue(store)
    ids = []
    for i in range(n):
        job = queue.submit(Event(source="watch", question="请描述", images=(f"/scans/{i}.png",)))
        store.claim(1, node="branch")
        store.finish(job.id, status=JobStatus.DONE, answer=f"臺北縣政府公文 第{i}號")
        ids.append(job.id)
    return ids


def counts(store: Store) -> dict[str, int]:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0) for table in TABLES
        }


def test_copy_sqlite_to_postgresql_and_back_keeps_every_row(tmp_path: Path, pg_url: str) -> None:
    sqlite_config = write_config(tmp_path / "sqlite.toml")
    store = Store(tmp_path / "data" / "tuwen.sqlite3")
    store.migrate()
    ids = history(store, 2500)  # more than two batches
    files = JobQueue(store).files
    for i in range(3):  # a watched folder's file table, with a non-UTF-8 name among them
        files.save(
            "watch",
            "scans",
            f"/scans/{i}\xff.png".encode("latin-1"),
            f"/scans/{i}.png",
            (1, 2, 3, 4),
            "ab" * 32,
            ids[i],
        )
    SessionStore(store).create(user="staff", role="staff", address="127.0.0.1", lifetime=timedelta(hours=1))
    before = counts(store)
    store.close()

    copied = tuwen(sqlite_config, "db", "copy", "--to", pg_url)
    assert copied.returncode == 0, copied.stderr
    assert f"jobs：原库 {before['jobs']} 行，目标库 {before['jobs']} 行" in copied.stdout
    assert "every table's count matches" in copied.stdout

    pg = Store(pg_url)
    assert counts(pg) == before
    assert len(search_jobs(pg, q="县政府", per_page=200).items) == 200  # folded text came along
    assert search_jobs(pg, q="第7號").total == 1
    new = JobQueue(pg).submit(Event(source="api", question="新问题", images=("/tmp/x.png",)))
    assert new.id == max(ids) + 1  # the id sequence moved past the copied ids
    pg.close()

    back = tmp_path / "back.sqlite3"
    pg_config = write_config(tmp_path / "pg.toml", pg_url)
    returned = tuwen(pg_config, "db", "copy", "--to", f"sqlite:///{back}")
    assert returned.returncode == 0, returned.stderr
    again = Store(back)
    assert counts(again) == {**before, "jobs": before["jobs"] + 1}
    assert search_jobs(again, q="县政府").total == len(ids)  # the FTS5 index was filled on the way in
    assert search_jobs(again, q="號").total == len(ids)  # and the one-character gram index
    again.close()


def test_copy_refuses_a_target_that_holds_rows(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path / "config.toml")
    store = Store(tmp_path / "data" / "tuwen.sqlite3")
    store.migrate()
    history(store, 3)
    store.close()
    assert tuwen(config, "db", "copy", "--to", pg_url).returncode == 0
    refused = tuwen(config, "db", "copy", "--to", pg_url)
    assert refused.returncode == 1
    assert "不是空的" in refused.stderr and "is not empty (jobs already hold rows)" in refused.stderr
    target = Store(pg_url)
    assert counts(target)["jobs"] == 3  # nothing copied twice
    target.close()


def test_an_unsupported_database_url_is_a_config_error_in_both_languages(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", "mysql://tuwen:hunter2@db/tuwen")
    checked = tuwen(config, "check-config")
    assert checked.returncode != 0
    assert "storage.database_url: ***" in checked.stderr
    assert "不是可用的数据库地址" in checked.stderr and "is not a usable database URL" in checked.stderr
    assert "hunter2" not in checked.stderr + checked.stdout


def test_backup_of_a_postgresql_database_points_to_pg_dump_and_db_copy(tmp_path: Path, pg_url: str) -> None:
    refused = tuwen(write_config(tmp_path / "config.toml", pg_url), "backup", str(tmp_path / "copy.sqlite3"))
    assert refused.returncode == 1
    assert "pg_dump" in refused.stderr and "tuwen db copy --to sqlite:///" in refused.stderr
    assert not (tmp_path / "copy.sqlite3").exists()


def test_an_unreachable_database_stops_serve_with_a_plain_message_and_no_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://tuwen:hunter2pw@127.0.0.1:1/tuwen"  # nothing listens on port 1
    started = tuwen(write_config(tmp_path / "config.toml", url), "serve")
    assert started.returncode != 0
    output = started.stdout + started.stderr
    assert "hunter2pw" not in output
    assert "postgresql+psycopg://tuwen:***@127.0.0.1:1/tuwen" in output
    assert "无法" in output and "Traceback" not in output
