"""Two real `tuwen serve` nodes sharing one PostgreSQL queue: a folder backlog is shared between them, one
node is killed with -9 in the middle of it, and every scan is still answered and recorded exactly once,
its sidecars written by the watching node; a question asked of one node is answered by that node."""

from __future__ import annotations

import base64
import io
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
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


def test_a_question_is_answered_by_the_node_it_was_asked_of(
    make_config, backend_factory, pg_url: str, scan_bytes
) -> None:  # type: ignore[no-untyped-def]
    from pydantic import SecretStr

    from tests.live import running_service as live_service

    def node(name: str):  # type: ignore[no-untyped-def]
        return make_config(
            watches=[],
            storage={"database_url": SecretStr(pg_url)},
            http={"api_key": SecretStr("k")},
            node={"name": name, "heartbeat_seconds": 0.5, "lease_seconds": 3.0},
        )

    scan = "data:image/jpeg;base64," + base64.b64encode(scan_bytes(["问一问"])).decode()
    body = {
        "model": "tuwen",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "写了什么？"},
                    {"type": "image_url", "image_url": {"url": scan}},
                ],
            }
        ],
    }
    asked: list[tuple[str, str]] = []
    with (
        live_service(node("hall"), backend_factory) as hall,
        live_service(node("office"), backend_factory) as office,
    ):
        for live, name in [(hall, "hall"), (office, "office")] * 3:
            response = httpx.post(
                live.base_url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": "Bearer k"},
                timeout=60,
            )
            assert response.status_code == 200
            asked.append((response.json()["id"].removeprefix("chatcmpl-"), name))
        answered = {uid: live.app.store.get_by_uid(uid) for uid, _ in asked}
    assert all((answered[uid].node, answered[uid].origin_node) == (name, name) for uid, name in asked)  # type: ignore[union-attr]
