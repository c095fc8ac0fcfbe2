"""Two real `tuwen serve` nodes sharing one PostgreSQL queue: a folder backlog is shared between them, one
node is killed with -9 in the middle of it, and every scan is still answered and recorded exactly once,
its sidecars written by the watching node."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.render import render_text_image
from bench.serving import running_service, tail, wait_healthy
from tests.conftest import wait_until
from tests.test_serve import _free_port

SCANS = 36


def node_config(folder: Path, name: str, port: int, url: str, *, watch: bool) -> Path:
    folder.mkdir()
    watched = '[[watch]]\npath = "../inbox"\nname = "inbox"\nstable_seconds = 0.3\n' if watch else ""
    config = folder / "config.toml"
    config.write_text(
        f"""
[storage]
data_dir = "data"
database_url = "{url}"
[http]
port = {port}
[model]
batch_size = 2
[node]
name = "{name}"
heartbeat_seconds = 0.5
lease_seconds = 3
{watched}""",
        encoding="utf-8",
    )
    return config


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        return list(conn.execute(sql))


def count(url: str, sql: str) -> int:
    found = rows(url, sql)
    return int(found[0][0]) if found else 0  # type: ignore[call-overload]


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "inbox"
    folder.mkdir()
    yield folder


def drop_scans(inbox: Path) -> None:
    for i in range(SCANS):
        image = render_text_image(
            [f"档案 第{i}号", "縣政府佈告 1930", f"scan {i}"], size=(900, 500), font_size=40
        )
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        (inbox / f"scan-{i:02d}.jpg").write_bytes(buffer.getvalue())


@pytest.mark.timeout(600)  # two services start and read 36 scans with OCR on a shared CPU
def test_a_node_killed_mid_backlog_leaves_every_scan_answered_once(
    tmp_path: Path, inbox: Path, pg_url: str
) -> None:
    watcher_port, helper_port = _free_port(), _free_port()
    watcher = node_config(tmp_path / "hall", "hall", watcher_port, pg_url, watch=True)
    helper = node_config(tmp_path / "office", "office", helper_port, pg_url, watch=False)
    with (
        running_service(watcher, tmp_path / "hall.log") as hall,
        running_service(helper, tmp_path / "office.log") as office,
    ):
        wait_healthy(watcher_port, hall, tmp_path / "hall.log")
        wait_healthy(helper_port, office, tmp_path / "office.log")
        drop_scans(inbox)
        # The helper has answered some of the folder's backlog and holds more when it dies.
        wait_until(
            lambda: (
                count(pg_url, "SELECT count(*) FROM jobs WHERE node='office' AND status='done'") >= 2
                and count(pg_url, "SELECT count(*) FROM jobs WHERE node='office' AND status='running'") >= 1
            ),
            timeout=180,
            interval=0.02,
        )
        office.send_signal(signal.SIGKILL)
        office.wait(10)
        held = count(pg_url, "SELECT count(*) FROM jobs WHERE node='office' AND status='running'")
        try:
            wait_until(
                lambda: count(pg_url, "SELECT count(*) FROM jobs WHERE status='done'") == SCANS,
                timeout=300,
                interval=0.5,
            )
        except AssertionError:
            raise AssertionError(tail(tmp_path / "hall.log")) from None
        # The watching node writes the sidecars of the scans the other node answered too.
        scans = sorted(inbox.glob("scan-*.jpg"))
        wait_until(lambda: all(p.with_name(p.name + ".json").exists() for p in scans), timeout=30)
        assert hall.poll() is None
    answered = rows(pg_url, "SELECT file_path, status, node, answer FROM jobs ORDER BY file_path")
    assert len(answered) == SCANS  # one job per scan: nothing queued twice
    assert sorted(Path(str(path)).name for path, *_ in answered) == [
        f"scan-{i:02d}.jpg" for i in range(SCANS)
    ]
    assert {status for _, status, _, _ in answered} == {"done"}
    assert {node for _, _, node, _ in answered} == {"hall", "office"}  # both nodes did work
    assert all(answer for *_, answer in answered)
    assert held >= 1  # the dead node's claims were re-queued and answered by the other
    assert "re-queued" in (tmp_path / "hall.log").read_text(encoding="utf-8")
