"""Scheduled reports: cron triggers fire at local times, the real scheduler runs them, missed runs catch up.

Time is moved with time-machine (it patches the wall clock for every thread, so APScheduler's own thread
sees it too; its waits use the monotonic clock and stay real). Fire times come from the real triggers; the
runs come from the real `BackgroundScheduler`. The report writer is a small stand-in recording its calls, so
these tests are about *when* reports run; what they contain is tested with the real writer in
test_report_delivery.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from db.store import Store
from service.composition import build_one_shot, build_service
from service.config import Config, ReportConfig, StorageConfig
from service.messages import msg
from service.reports.content import period_bounds
from service.reports.schedule import STATE_FILE, ReportScheduler, latest_fire, next_fire
from tests.conftest import wait_until

SHANGHAI = ZoneInfo("Asia/Shanghai")


def shanghai(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=SHANGHAI)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@dataclass
class StandInFiles:
    """What the scheduler and delivery read of a `ReportFiles`."""

    folder: Path
    markdown: Path | None
    html: Path | None = None
    csv: Path | None = None
    png: Path | None = None
    summary_zh: str = "日报：今日共处理 0 项"


class StandInWriter:
    """Records each call and writes one small file, like `write_report` would; can be told to fail."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, datetime, datetime]] = []
        self.fail: Exception | None = None

    def __call__(
        self, store: Store, config: Config, report: ReportConfig, since: datetime, until: datetime
    ) -> Any:
        self.calls.append((report.name, since, until))
        if self.fail is not None:
            raise self.fail
        folder = self.root / report.name / since.date().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        markdown = folder / f"{report.name}.md"
        markdown.write_text("# 报告\n", encoding="utf-8")
        return StandInFiles(folder, markdown)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Callable[..., tuple[ReportScheduler, StandInWriter]]]:
    """Build schedulers for one report over a shared data dir and stand-in writer; stops them afterwards."""
    store = Store(tmp_path / "t.sqlite3")
    writer = StandInWriter(tmp_path / "out")
    built: list[ReportScheduler] = []

    def make(**report: Any) -> tuple[ReportScheduler, StandInWriter]:
        config = Config(
            storage=StorageConfig(data_dir=tmp_path / "data"),
            report=[ReportConfig(**{"name": "daily", "schedule": "0 18 * * *", **report})],
        )
        scheduler = ReportScheduler(config, store, {}, write=writer, bounds=period_bounds)
        built.append(scheduler)
        return scheduler, writer

    yield make
    for scheduler in built:
        scheduler.stop(timeout=5)
    store.engine.dispose()


def remember_last_run(data_dir: Path, when: datetime, name: str = "daily") -> None:
    """A state file as an earlier service left it: its last run done at `when`."""
    path = data_dir / "reports" / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"first_seen": (when - timedelta(days=30)).isoformat(), "last_fire": when.isoformat()}
    path.write_text(json.dumps({"version": 1, "reports": {name: entry}}), encoding="utf-8")


# --- fire times from the real triggers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "timezone", "now_utc", "expected_utc"),
    [
        # 18:00 in Shanghai (UTC+8, no DST) is 10:00 UTC, winter and summer alike.
        ("0 18 * * *", "Asia/Shanghai", utc(2026, 1, 15, 0, 0), utc(2026, 1, 15, 10, 0)),
        ("0 18 * * *", "Asia/Shanghai", utc(2026, 7, 15, 0, 0), utc(2026, 7, 15, 10, 0)),
        # The night Europe moves its clocks: Shanghai does not.
        ("0 18 * * *", "Asia/Shanghai", utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 10, 0)),
        # Past 10:00 UTC it is already the next local day's turn.
        ("0 18 * * *", "Asia/Shanghai", utc(2026, 3, 1, 10, 0, 1), utc(2026, 3, 2, 10, 0)),
        # 00:30 local is 16:30 UTC the day before: across midnight.
        ("30 0 * * *", "Asia/Shanghai", utc(2026, 3, 1, 12, 0), utc(2026, 3, 1, 16, 30)),
        # Monday 09:00 local is Monday 01:00 UTC (2026-03-01 is a Sunday).
        ("0 9 * * 1", "Asia/Shanghai", utc(2026, 3, 1, 12, 0), utc(2026, 3, 2, 1, 0)),
        # A timezone with DST, for contrast: 18:00 in Berlin is 17:00 UTC in winter, 16:00 UTC in summer.
        ("0 18 * * *", "Europe/Berlin", utc(2026, 1, 15, 0, 0), utc(2026, 1, 15, 17, 0)),
        ("0 18 * * *", "Europe/Berlin", utc(2026, 7, 15, 0, 0), utc(2026, 7, 15, 16, 0)),
    ],
)  # fmt: skip
def test_next_fire_is_at_the_local_time(
    schedule: str, timezone: str, now_utc: datetime, expected_utc: datetime
) -> None:
    report = ReportConfig(name="r", schedule=schedule, timezone=timezone)
    with time_machine.travel(now_utc, tick=False):
        fire = next_fire(report, datetime.now(UTC))
    assert fire is not None
    assert fire.astimezone(UTC) == expected_utc


def test_latest_fire_and_the_period_of_a_run_just_after_midnight() -> None:
    report = ReportConfig(name="night", schedule="30 0 * * *", timezone="Asia/Shanghai")
    with time_machine.travel(utc(2026, 3, 1, 16, 45), tick=False):  # 00:45 on 2 March there
        fired = latest_fire(report, datetime.now(UTC))
    assert fired == shanghai(2026, 3, 2, 0, 30)
    assert period_bounds(report, fired) == (shanghai(2026, 3, 1), shanghai(2026, 3, 2))  # all of 1 March
    yearly = ReportConfig(name="y", schedule="0 9 1 1 *")
    assert latest_fire(yearly, shanghai(2026, 12, 31, 23, 0)) == shanghai(2026, 1, 1, 9, 0)


# --- the real scheduler ------------------------------------------------------------------------------------


def test_the_real_scheduler_runs_the_report_at_its_local_time(
    setup: Callable[..., tuple[ReportScheduler, StandInWriter]], tmp_path: Path
) -> None:
    # 1.5 s before 18:00 in Shanghai, with the clock running: APScheduler's thread must wake and run it.
    with time_machine.travel(shanghai(2026, 3, 2, 17, 59, 58, 500_000), tick=True):
        scheduler, writer = setup()
        scheduler.start()  # a report seen for the first time: nothing is "missed"
        assert writer.calls == []
        assert scheduler.next_run_times()["daily"] == shanghai(2026, 3, 2, 18, 0)
        wait_until(lambda: writer.calls, timeout=10)
    assert writer.calls == [("daily", shanghai(2026, 3, 1), shanghai(2026, 3, 2))]  # yesterday, local
    wait_until(lambda: scheduler.state.time("daily", "last_fire"), timeout=5)
    assert scheduler.state.time("daily", "last_fire") == shanghai(2026, 3, 2, 18, 0)
    (run,) = scheduler.state.get("daily")["runs"]
    assert run["status"] == "written" and run["files"]["markdown"].endswith("daily.md")
    assert (tmp_path / "data" / "reports" / STATE_FILE).is_file()


def test_missed_runs_at_start_run_once_coalesced(
    setup: Callable[..., tuple[ReportScheduler, StandInWriter]], tmp_path: Path
) -> None:
    remember_last_run(tmp_path / "data", shanghai(2026, 3, 1, 18, 0))
    # Down from before 2 March 18:00 until 3 March 19:00: two fires missed, the later one 1 h ago.
    with time_machine.travel(shanghai(2026, 3, 3, 19, 0), tick=True):
        scheduler, writer = setup(grace_minutes=12 * 60)
        scheduler.start()
        wait_until(
            lambda: scheduler.state.time("daily", "last_fire") == shanghai(2026, 3, 3, 18, 0), timeout=10
        )
        time.sleep(0.5)  # a second run would have started by now
        assert writer.calls == [("daily", shanghai(2026, 3, 2), shanghai(2026, 3, 3))]  # once, for the latest
        assert scheduler.next_run_times()["daily"] == shanghai(2026, 3, 4, 18, 0)
        scheduler.stop()

        again, _ = setup(grace_minutes=12 * 60)  # a restart right after: nothing is missed any more
        again.start()
        time.sleep(0.5)
    assert len(writer.calls) == 1


def test_a_run_missed_beyond_grace_is_not_run_and_logged_once(
    setup: Callable[..., tuple[ReportScheduler, StandInWriter]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tuwen.service.reports")
    remember_last_run(tmp_path / "data", shanghai(2026, 3, 1, 18, 0))
    # The latest missed fire, 3 March 18:00, is 15 h ago: beyond the 12 h grace.
    with time_machine.travel(shanghai(2026, 3, 4, 9, 0), tick=True):
        scheduler, writer = setup(grace_minutes=12 * 60)
        scheduler.start()
        wait_until(lambda: scheduler.state.time("daily", "skipped_until"), timeout=10)
        time.sleep(0.3)
        scheduler.stop()
        missed = msg("report_missed", name="daily", when="2026-03-03 18:00 CST")
        assert caplog.text.count(str(missed)) == 1
        assert scheduler.state.time("daily", "last_fire") == shanghai(2026, 3, 1, 18, 0)

        again, _ = setup(grace_minutes=12 * 60)
        again.start()
        time.sleep(0.3)
        assert again.next_run_times()["daily"] == shanghai(2026, 3, 4, 18, 0)
    assert writer.calls == []
    assert caplog.text.count(str(missed)) == 1


def test_a_failed_write_is_logged_recorded_and_not_marked_done(
    setup: Callable[..., tuple[ReportScheduler, StandInWriter]], caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, writer = setup()
    writer.fail = OSError("disk full")
    record = scheduler.run_report("daily", shanghai(2026, 3, 2, 18, 0))
    assert record.status == "failed" and "disk full" in record.error
    assert str(msg("report_run_failed", name="daily", reason="OSError: disk full")) in caplog.text
    assert scheduler.state.time("daily", "last_fire") is None  # so a restart within grace tries again
    assert scheduler.state.get("daily")["runs"][0]["status"] == "failed"


def test_a_corrupt_state_file_means_no_runs_remembered(
    setup: Callable[..., tuple[ReportScheduler, StandInWriter]], tmp_path: Path
) -> None:
    state = tmp_path / "data" / "reports" / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text("{not json", encoding="utf-8")
    scheduler, writer = setup()
    scheduler.start()
    assert scheduler.state.time("daily", "first_seen") is not None
    assert json.loads(state.read_text(encoding="utf-8"))["reports"]["daily"]["first_seen"]
    assert writer.calls == []


def test_the_app_starts_the_scheduler_after_sources_and_stops_it_first(
    make_config: Callable[..., Config], backend_factory: Any
) -> None:
    config = make_config(watches=[])
    config.report = [ReportConfig(name="daily")]
    app = build_service(config, backend_factory=backend_factory)
    app.start()
    try:
        assert app.reports is not None
        assert app.reports.next_run_times()["daily"] is not None
        assert app.notifiers == {}
    finally:
        app.stop()
    assert app.reports is None
    one_shot = build_one_shot(config, backend_factory=backend_factory)
    one_shot.start()
    try:
        # `tuwen ask` and friends schedule nothing: no scheduler thread runs beside them.
        assert not hasattr(one_shot, "reports")
        assert not [t for t in threading.enumerate() if "apscheduler" in t.name.lower()]
    finally:
        one_shot.close()


@pytest.mark.parametrize(
    ("weekday", "expected"),
    [
        ("1", "Monday"),
        ("0", "Sunday"),
        ("7", "Sunday"),
        ("1-5", "Monday"),
        ("sat,sun", "Saturday"),
        ("*/3", "Wednesday"),
    ],
)
def test_weekday_numbers_mean_what_they_mean_in_crontab(weekday: str, expected: str) -> None:
    # APScheduler 3's from_crontab would take "1" for Tuesday; the config's trigger reads crontab's numbers.
    report = ReportConfig(name="weekly", schedule=f"0 9 * * {weekday}")
    fire = next_fire(report, shanghai(2026, 3, 1, 12, 0))  # a Sunday noon
    assert fire is not None and fire.strftime("%A") == expected


@pytest.mark.parametrize("schedule", ["0 9 * * 8", "0 9 * * 5-2", "0 9 * * */0", "0 9 * *"])
def test_impossible_weekdays_are_config_errors(schedule: str) -> None:
    with pytest.raises(ValueError, match="schedule"):
        ReportConfig(name="weekly", schedule=schedule)
