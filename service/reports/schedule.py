"""Scheduled reports inside `tuwen serve`: one cron trigger per `[[report]]`, missed runs caught up once.

APScheduler's `BackgroundScheduler` runs the reports in its own small thread pool, so writing a report (which
only reads the history) never waits for, or holds up, the model worker. Each report is one job with a
`CronTrigger` in the report's timezone, `coalesce=True`, `max_instances=1` and `misfire_grace_time` from
`grace_minutes`.

Missed runs. APScheduler keeps its jobs in memory, so on its own it forgets what was due while the service was
down. We remember, per report, the scheduled time of the last run that wrote its files, in a small JSON file
(`data_dir/reports/.schedule-state.json`, replaced atomically). At start the first fire time after that is
handed to APScheduler as the job's `next_run_time`: if it lies in the past, APScheduler's own misfire logic
runs the job once (every missed fire coalesced into the latest) when the latest is within the grace period, or
reports it missed (logged, and remembered so the next start does not log it again). A report seen for the
first time starts from now: installing the service is not a missed run.

Why a JSON file and not a table: the state is a few lines per report, written only by this scheduler, and it
describes the files beside it; a table would need a migration and a write path through the job store's
single writer for data no query ever joins with the jobs. A crash mid-write leaves the old file (temp file +
`os.replace`), and a corrupt or missing file only means "no runs remembered" (logged).

A run: `period_bounds` → `write_report` (which also copies the files into `[[report]] folder`) → log the
paths → remember the run → deliver to chats (retried, see `service.reports.delivery`) → remember how delivery
went. A run records its scheduled time as done once the files exist, so a failed delivery is never a reason
to write the files again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from db.store import Store
from service.config import Config, ReportConfig
from service.cron import cron_trigger
from service.messages import msg
from service.reports.delivery import Deliverer, DeliveryResult, ReportFilesLike
from service.sources import Notifier

log = logging.getLogger(f"tuwen.{__name__}")

STATE_FILE = ".schedule-state.json"  # a leading dot: report names may not start with one (ReportConfig)
HISTORY_KEEP = 20  # runs remembered per report, newest first, for the web UI and for people reading the file
MIN_GRACE_SECONDS = 60  # APScheduler calls a run late by any margin over its grace "missed": allow jitter
STOP_TIMEOUT_SECONDS = 10.0
POOL_SIZE = 2
# How far back to look for a report's latest fire time; a yearly cron is the longest a crontab can say.
_LOOKBACK = (
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=8),
    timedelta(days=32),
    timedelta(days=367),
)

WriteReport = Callable[[Store, Config, ReportConfig, datetime, datetime], ReportFilesLike]
PeriodBounds = Callable[[ReportConfig, datetime], tuple[datetime, datetime]]


def build_trigger(report: ReportConfig) -> CronTrigger:
    """The report's cron schedule, in its own timezone (validated when the config was loaded).

    Through `service.cron.cron_trigger`, not `CronTrigger.from_crontab`: weekday 1 is Monday, as in crontab.
    """
    return cron_trigger(report.schedule, report.timezone)


def next_fire(report: ReportConfig, after: datetime) -> datetime | None:
    """The first fire time strictly after `after` (tz-aware, in the report's timezone)."""
    return build_trigger(report).get_next_fire_time(after, after)


def latest_fire(report: ReportConfig, now: datetime) -> datetime | None:
    """The most recent fire time at or before `now`: the run time a job started by the trigger stands for."""
    trigger = build_trigger(report)
    for lookback in _LOOKBACK:
        latest = None
        fire = trigger.get_next_fire_time(None, now - lookback)
        while fire is not None and fire <= now:
            latest = fire
            fire = trigger.get_next_fire_time(fire, now)
        if latest is not None:
            return latest
    return None


@dataclass
class RunRecord:
    """One run of one report, as remembered in the state file."""

    name: str
    scheduled_for: datetime
    since: datetime
    until: datetime
    ran_at: datetime
    status: str  # "written" | "failed"
    files: dict[str, str] = field(default_factory=dict)
    error: str = ""
    delivery: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (ISO timestamps)."""
        return {
            "scheduled_for": self.scheduled_for.isoformat(),
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "ran_at": self.ran_at.isoformat(),
            "status": self.status,
            "files": self.files,
            "error": self.error,
            "delivery": self.delivery,
        }


class ScheduleState:
    """The JSON state file: per report, when it was first scheduled, its last done run and recent runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "report schedule state %s unreadable (%s); no earlier runs remembered", self.path, exc
            )
            return {}
        return {k: v for k, v in data.get("reports", {}).items() if isinstance(v, dict)}

    def get(self, name: str) -> dict[str, Any]:
        """A copy of what is remembered about report `name` (empty when nothing is)."""
        with self._lock:
            return json.loads(json.dumps(self._data.get(name, {})))

    def time(self, name: str, key: str) -> datetime | None:
        """A remembered timestamp (`first_seen`, `last_fire`, `skipped_until`) of report `name`."""
        value = self.get(name).get(key)
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    def update(self, name: str, *, run: RunRecord | None = None, **times: datetime) -> None:
        """Remember timestamps and/or a run (replacing an earlier record of the same scheduled time)."""
        with self._lock:
            entry = self._data.setdefault(name, {})
            entry.update({key: value.isoformat() for key, value in times.items()})
            if run is not None:
                record = run.as_dict()
                runs = [r for r in entry.get("runs", []) if r.get("scheduled_for") != record["scheduled_for"]]
                entry["runs"] = [record, *runs][:HISTORY_KEEP]
            self._save()

    def _save(self) -> None:
        # Temp file in the same folder + os.replace: a reader or a crash sees the old file or the new one.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": 1, "reports": self._data}, ensure_ascii=False, indent=2)
        handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".schedule-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


class ReportScheduler:
    """Runs every `[[report]]` on its schedule inside the service; `run_report` runs one at once."""

    def __init__(
        self,
        config: Config,
        store: Store,
        notifiers: Mapping[str, Notifier] | None = None,
        *,
        write: WriteReport | None = None,
        bounds: PeriodBounds | None = None,
        deliverer: Deliverer | None = None,
        state_path: Path | None = None,
    ) -> None:
        if write is None or bounds is None:
            from service.reports.content import period_bounds
            from service.reports.render import write_report

            write, bounds = write or write_report, bounds or period_bounds
        self.config = config
        self.store = store
        self.write = write
        self.bounds = bounds
        self.stop_event = threading.Event()
        self.deliverer = deliverer or Deliverer(notifiers or {}, stop_event=self.stop_event)
        self.state = ScheduleState(state_path or config.storage.data_dir / "reports" / STATE_FILE)
        self.reports = {report.name: report for report in config.report}
        self._scheduler: BackgroundScheduler | None = None
        self._running = 0
        self._idle = threading.Condition()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Schedule every report, hand missed runs to APScheduler's misfire handling, start the thread."""
        scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(POOL_SIZE)}, daemon=True
        )
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        now = datetime.now(UTC)
        for report in self.reports.values():
            missed = self._first_missed(report, now)
            options: dict[str, Any] = {}
            if missed is not None:
                log.info(
                    "report %s: a run due at %s was missed while stopped", report.name, _local(report, missed)
                )
                options["next_run_time"] = missed
            scheduler.add_job(
                self._scheduled_run,
                build_trigger(report),
                args=[report.name],
                id=report.name,
                name=f"report {report.name}",
                misfire_grace_time=max(MIN_GRACE_SECONDS, int(report.grace_minutes * 60)),
                coalesce=True,
                max_instances=1,
                **options,
            )
        scheduler.start()
        self._scheduler = scheduler
        for job in scheduler.get_jobs():
            report = self.reports[job.id]
            when = _local(report, job.next_run_time) if job.next_run_time else "never"
            log.info(
                "report %s scheduled (%s, %s); next run %s", job.id, report.schedule, report.timezone, when
            )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop scheduling; cut delivery retries short; wait up to `timeout` s for a run in hand."""
        self.stop_event.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        with self._idle:
            if not self._idle.wait_for(lambda: self._running == 0, timeout):
                log.warning("a report run did not finish within %.0f s of the stop", timeout)
        self._scheduler = None

    def _first_missed(self, report: ReportConfig, now: datetime) -> datetime | None:
        """The first fire time after the last one dealt with, if it already passed; remembers new reports."""
        marks = [self.state.time(report.name, key) for key in ("first_seen", "last_fire", "skipped_until")]
        known = [mark for mark in marks if mark is not None]
        if not known:
            self.state.update(report.name, first_seen=now)
            return None
        due = next_fire(report, max(known))
        return due if due is not None and due <= now else None

    def _on_missed(self, event: JobExecutionEvent) -> None:
        report = self.reports.get(event.job_id)
        if report is None:
            return
        log.warning(
            "%s", msg("report_missed", name=report.name, when=_local(report, event.scheduled_run_time))
        )
        self.state.update(report.name, skipped_until=event.scheduled_run_time)

    # -- runs ------------------------------------------------------------------------------------

    def next_run_times(self) -> dict[str, datetime | None]:
        """When each report runs next (None: never, or the scheduler is not running)."""
        scheduler = self._scheduler
        jobs = {job.id: job.next_run_time for job in scheduler.get_jobs()} if scheduler else {}
        return {name: jobs.get(name) for name in self.reports}

    def _scheduled_run(self, name: str) -> None:
        # APScheduler does not pass the run time; the latest fire time is it (the coalesced one, if late).
        if self.stop_event.is_set():  # submitted just before the stop: the database is closing
            return
        report = self.reports[name]
        run_time = latest_fire(report, datetime.now(UTC))
        if run_time is None:  # cannot happen for a trigger that just fired; never guess a period
            log.error("report %s fired but no fire time was found before now", name)
            return
        self.run_report(name, run_time)

    def run_report(self, name: str, run_time: datetime) -> RunRecord:
        """Write report `name` for the period of a run at `run_time`, then deliver it; never raises."""
        report = self.reports[name]
        with self._idle:
            self._running += 1
        try:
            return self._run(report, run_time)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _run(self, report: ReportConfig, run_time: datetime) -> RunRecord:
        since, until = self.bounds(report, run_time)
        record = RunRecord(report.name, run_time, since, until, datetime.now(UTC), "failed")
        try:
            files = self.write(self.store, self.config, report, since, until)
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            log.exception("%s", msg("report_run_failed", name=report.name, reason=record.error))
            self.state.update(report.name, run=record)
            return record
        record.status = "written"
        record.files = _paths(files)
        written = ", ".join(record.files.values()) or "(no files)"
        log.info(
            "report %s for %s – %s written: %s", report.name, since.isoformat(), until.isoformat(), written
        )
        # Done as soon as the files exist: a restart during delivery must not write them again.
        self.state.update(report.name, run=record, last_fire=run_time)
        results: list[DeliveryResult] = self.deliverer.deliver(report, files)
        record.delivery = [result.as_dict() for result in results]
        if results:
            self.state.update(report.name, run=record)
        return record


def _paths(files: ReportFilesLike) -> dict[str, str]:
    found = {}
    for kind in ("folder", "markdown", "html", "csv", "png"):
        path = getattr(files, kind, None)
        if path is not None:
            found[kind] = str(path)
    return found


def _local(report: ReportConfig, when: datetime) -> str:
    return when.astimezone(ZoneInfo(report.timezone)).strftime("%Y-%m-%d %H:%M %Z")
