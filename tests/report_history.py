"""A job history for the report tests, filled through the real queue and model worker (embedded OCR).

Every job is submitted with `JobQueue.submit` and answered (or refused) by the real worker and OCR backend,
then reviewed through `Store.set_review`. Only the clock is faked afterwards: the jobs ran seconds ago, so
their `created_at` / `finished_at` (and the reviews' `reviewed_at`) are moved with a direct UPDATE to chosen
instants spread over three days and several hours, which is what a report is about. Two answers are also
replaced by hostile "model output" (a script tag, a spreadsheet formula) the OCR could not be made to say.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bench.render import render_text_image
from db.models import Job
from service.composition import build_one_shot
from service.config import Config, HttpConfig, StorageConfig, WatchConfig
from service.events import Event
from service.images import sha256_file
from tests.conftest import InstrumentedBackend

HOSTILE_ANSWER = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2"> 危险的回答'
FORMULA_ANSWER = '=HYPERLINK("http://evil.example/","点我")'
CORRECTION = "这是一件西周青铜鼎"
# The report period used by the tests: three Shanghai days, 2025-03-03 .. 2025-03-05 inclusive.
SINCE_UTC = datetime(2025, 3, 2, 16, 0, tzinfo=UTC)
UNTIL_UTC = datetime(2025, 3, 5, 16, 0, tzinfo=UTC)


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant in March 2025, UTC (Shanghai local time is 8 hours ahead)."""
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


# (key, source, source_ref, what the file is, question, created_at). "scan" files are rendered text the OCR
# reads; "truncated" and "empty" files fail as image_corrupt and image_empty.
PLAN: list[tuple[str, str, str, str, str, datetime]] = [
    ("a1", "watch", "archive", "scan", "请描述", utc(3, 2, 30)),  # 10:30 Shanghai
    ("a2", "watch", "archive", "scan", "请描述", utc(4, 2, 30)),  # 10:30
    ("a3", "watch", "archive", "scan", "请描述", utc(4, 2, 45)),  # 10:45
    ("a4", "watch", "archive", "scan", "请描述", utc(5, 6, 0)),  # 14:00
    ("bad1", "watch", "archive", "truncated", "请描述", utc(4, 7, 0)),
    ("bad2", "watch", "archive", "empty", "请描述", utc(4, 7, 10)),
    ("bad3", "watch", "archive", "truncated", "请描述", utc(5, 1, 0)),
    ("p1", "watch", "photos", "scan", "照片里有谁？", utc(3, 8, 0)),
    ("p2", "watch", "photos", "scan", "照片里有谁？", utc(5, 2, 30)),  # 10:30
    ("k1", "kiosk", "", "scan", "这是什么？", utc(3, 3, 0)),  # 11:00
    ("k2", "kiosk", "", "scan", "这是 什么", utc(4, 3, 10)),  # 11:10
    ("k3", "kiosk", "", "scan", "它是什么年代的？", utc(5, 5, 0)),
    ("t1", "telegram", "10001", "scan", "这是什么?", utc(5, 2, 40)),  # 10:40
    ("t2", "telegram", "10001", "scan", "请描述一下", utc(4, 12, 0)),
    ("x1", "api", "", "scan", "请描述", utc(5, 9, 0)),
    # Outside the period: one minute before it starts, and exactly when it ends (the end is exclusive).
    ("early", "watch", "archive", "scan", "请描述", utc(2, 15, 59)),
    ("late", "kiosk", "", "scan", "这是什么？", utc(5, 16, 0)),
]


@dataclass
class History:
    """The filled database and what the tests need to find their jobs."""

    config: Config
    ids: dict[str, int]  # plan key -> job id

    @property
    def db_path(self) -> Path:
        return self.config.db_path


def _scan(path: Path, text: str) -> None:
    buffer = io.BytesIO()
    render_text_image([text, "Archive scan"], size=(480, 200), font_size=30).save(buffer, "JPEG", quality=85)
    path.write_bytes(buffer.getvalue())


def build_history(root: Path, engine: Any) -> History:
    """Fill `root/data` through the real queue; returns the config (two watches) and the job ids."""
    files = root / "files"
    files.mkdir(parents=True)
    config = Config(
        storage=StorageConfig(data_dir=root / "data"),
        http=HttpConfig(enabled=False),
        watch=[WatchConfig(path=files, name="archive"), WatchConfig(path=files, name="photos")],
    )
    run = build_one_shot(config, backend_factory=lambda cfg: InstrumentedBackend(cfg, engine))
    uids: dict[str, str] = {}
    for key, source, ref, kind, question, _ in PLAN:
        path = files / f"{key}.jpg"
        if kind == "scan":
            _scan(path, f"档案 {key}")
        elif kind == "truncated":
            _scan(path, key)
            path.write_bytes(path.read_bytes()[:400])
        else:
            path.write_bytes(b"")
        event = Event(
            source=source, source_ref=ref, question=question, images=(str(path),), sha256=sha256_file(path)
        )
        uids[key] = run.submit(event).uid
    run.start()
    try:
        run.wait(uids.values(), lambda job: None)
    finally:
        run.close()
    return _arrange(config, uids)


def _arrange(config: Config, uids: dict[str, str]) -> History:
    from db.store import Store

    store = Store(config.db_path)
    ids = {key: store.get_by_uid(uid).id for key, uid in uids.items()}  # type: ignore[union-attr]
    for key, verdict in (("a1", "correct"), ("a2", "correct"), ("p1", "correct"), ("a4", "correct")):
        store.set_review(ids[key], verdict)
    store.set_review(ids["k1"], "corrected", CORRECTION)
    with store.engine.begin() as conn:
        # The clock: the jobs ran just now; move them to the instants of the plan. Each job took a different
        # number of seconds from submission to answer, so the percentiles have something to rank.
        for index, (key, *_, created) in enumerate(PLAN):
            finished = created + timedelta(seconds=2 + 3 * index)
            conn.execute(
                update(Job).where(Job.id == ids[key]).values(created_at=created, finished_at=finished)
            )
        # Reviews recorded in the period, except a4's, recorded after it ended.
        in_period = utc(5, 8, 0)
        conn.execute(
            update(Job)
            .where(Job.id.in_([ids["a1"], ids["a2"], ids["p1"], ids["k1"]]))
            .values(reviewed_at=in_period)
        )
        conn.execute(update(Job).where(Job.id == ids["a4"]).values(reviewed_at=utc(6, 2, 0)))
        # Hostile model output, which no OCR of a rendered scan reliably produces.
        conn.execute(update(Job).where(Job.id == ids["x1"]).values(answer=HOSTILE_ANSWER))
        conn.execute(update(Job).where(Job.id == ids["k3"]).values(answer=FORMULA_ANSWER))
    store.close()
    return History(config=config, ids=ids)
