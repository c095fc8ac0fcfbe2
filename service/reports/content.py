"""Every number a report shows, computed from the history database for one period `[since, until)`.

What the numbers mean (the report prints the short form of these rules, so readers need not guess):

- **Which jobs.** A job belongs to the period in which it was *submitted* (`created_at` in `[since, until)`),
  the same rule as the history search's date filter. Jobs still queued or running are counted as pending.
- **Scope.** `sources` and `watches` of the `[[report]]` narrow the jobs; both empty means every job. A watch
  list alone means "only these folders". With both, a job counts when its source is listed (folder jobs
  then only from the listed watches) or when it comes from a listed watch.
- **Local time** is the report's `timezone`, not the server's: a museum in Shanghai whose server runs in UTC
  still sees its busiest hour as 10:00, not 02:00.
- **A day** runs from local midnight to the next local midnight. In a zone with daylight saving that is 23
  hours on the spring change (Europe/Berlin, last Sunday of March) and 25 on the autumn one; weeks and
  months are whole local days, so a week containing the spring change is 167 hours long.
- **Latency.** Turnaround is `created_at → finished_at` of done jobs (waiting in the queue plus answering:
  what a visitor or a curator experiences); processing is the worker's `latency_ms` (the model's own time).
  Percentiles are nearest-rank: p95 is a time that 95 % of jobs did not exceed.
- **Throughput** is finished jobs (done + failed) per hour of the period and per local day.
- **Frequent questions** come only from sources where a person typed the question (kiosk, web, API, bots);
  folder, batch and CLI jobs all ask the configured prompt. Questions are grouped after NFKC folding, case
  folding and dropping whitespace and punctuation, so 「这是什么？」 and 「这是什么」 count together.
- **Reviews.** Staff verdicts *recorded* in the period (`reviewed_at`), with the sampled accuracy and its
  Wilson 95 % interval (`db.history.review_stats`); and how many of the period's own answers have been
  reviewed so far.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, false, func, or_, select

from db.history import ReviewStats, review_stats
from db.models import Job, JobStatus
from db.store import Store
from service.config import ImagesConfig, ReportConfig
from service.events import FILE_SOURCES, Source
from service.messages import all_codes, msg
from service.reports.items import LinkContext, ReportItem, corrections, new_items, source_names

# Sources whose question is the configured prompt rather than something a person typed.
PROMPT_SOURCES = FILE_SOURCES
MAX_QUESTIONS = 10
BUSIEST_HOURS = 3


@dataclass(frozen=True)
class SourceCount:
    """Jobs of one source (or one watch) in the period; `zh`/`en` are its display names."""

    key: str
    zh: str
    en: str
    total: int
    done: int
    failed: int


@dataclass(frozen=True)
class FailureReason:
    """Failed jobs sharing one `error_code`, with the catalogue's bilingual message and one real example."""

    code: str
    zh: str
    en: str
    count: int
    example: str


@dataclass(frozen=True)
class Latency:
    """Nearest-rank percentiles in milliseconds over `count` jobs (None when there are none)."""

    count: int
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class QuestionCount:
    """One question as people typed it most often, and how many times it (or a variant) was asked."""

    text: str
    count: int


@dataclass
class ReportData:
    """Every number the report shows, for `[since, until)` (both tz-aware in `timezone`)."""

    name: str
    period: str
    timezone: str
    since: datetime
    until: datetime
    generated_at: datetime
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    by_source: list[SourceCount] = field(default_factory=list)
    by_watch: list[SourceCount] = field(default_factory=list)
    failures: list[FailureReason] = field(default_factory=list)
    turnaround: Latency = Latency(0, None, None)
    processing: Latency = Latency(0, None, None)
    per_hour: float = 0.0
    per_day: float = 0.0
    hours: list[int] = field(default_factory=lambda: [0] * 24)  # jobs per local hour of day
    busiest_hours: list[tuple[int, int]] = field(default_factory=list)  # (hour, jobs), busiest first
    days: list[date] = field(default_factory=list)  # every local day the period touches
    daily: dict[str, list[int]] = field(default_factory=dict)  # source -> jobs per day, aligned with days
    daily_failed: list[int] = field(default_factory=list)  # failed jobs per day, aligned with days
    questions: list[QuestionCount] = field(default_factory=list)
    reviews: ReviewStats | None = None  # verdicts recorded in the period
    answers_reviewed: ReviewStats | None = None  # the period's own done answers, reviewed so far
    corrections: list[ReportItem] = field(default_factory=list)
    items: list[ReportItem] = field(default_factory=list)  # done jobs, oldest first, at most items.MAX_ITEMS
    items_total: int = 0
    base_url: str = ""

    @property
    def history_url(self) -> str | None:
        """The web UI's history tab, when the report knows where the web UI is."""
        return f"{self.base_url}/#history" if self.base_url else None

    @property
    def failed_shares(self) -> list[float | None]:
        """Each day's failed jobs as a percentage of that day's jobs (None for a day without jobs)."""
        totals = [sum(day) for day in zip(*self.daily.values(), strict=True)] or [0] * len(self.days)
        return [
            100 * failed / total if total else None
            for failed, total in zip(self.daily_failed, totals, strict=True)
        ]

    @property
    def period_hours(self) -> float:
        """The period's real length in hours (23 or 25 for a local day across a DST change)."""
        return (self.until.astimezone(UTC) - self.since.astimezone(UTC)).total_seconds() / 3600


def period_bounds(report: ReportConfig, run_time: datetime) -> tuple[datetime, datetime]:
    """The period a run at `run_time` covers, ending at the local midnight that starts run_time's day.

    day: the previous local day; week: the 7 local days before; month: the previous calendar month (a run on
    any day of April covers March). Both bounds are tz-aware in `report.timezone`; a naive `run_time` is read
    as local time there.
    """
    tz = ZoneInfo(report.timezone)
    local = run_time.astimezone(tz) if run_time.tzinfo else run_time.replace(tzinfo=tz)
    end_day = local.date()
    if report.period == "day":
        start_day = end_day - timedelta(days=1)
    elif report.period == "week":
        start_day = end_day - timedelta(days=7)
    else:
        end_day = end_day.replace(day=1)
        start_day = (end_day - timedelta(days=1)).replace(day=1)
    return local_midnight(start_day, tz), local_midnight(end_day, tz)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The instant `day` begins in `tz`, tz-aware (normalised, should midnight fall into a DST gap)."""
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(UTC).astimezone(tz)


def scope_conditions(report: ReportConfig) -> list[ColumnElement[bool]]:
    """WHERE conditions for the report's `sources` / `watches` (see the module docstring)."""
    if not report.sources and not report.watches:
        return []
    other_sources = [source for source in report.sources if source != Source.WATCH]
    if report.watches:
        folders: ColumnElement[bool] = and_(Job.source == Source.WATCH, Job.source_ref.in_(report.watches))
    elif Source.WATCH in report.sources:
        folders = Job.source == "watch"
    else:
        folders = false()
    return [or_(Job.source.in_(other_sources), folders)]


def period_conditions(since: datetime, until: datetime) -> list[ColumnElement[bool]]:
    """Jobs submitted in `[since, until)`."""
    return [Job.created_at >= since, Job.created_at < until]


def collect(
    store: Store,
    report: ReportConfig,
    since: datetime,
    until: datetime,
    *,
    images: ImagesConfig | None = None,
) -> ReportData:
    """Compute the report for jobs submitted in `[since, until)` within the report's scope.

    `images` are the `[images]` limits used to decode thumbnails for the new-items table (the defaults
    when not given).
    """
    tz = ZoneInfo(report.timezone)
    since, until = since.astimezone(tz), until.astimezone(tz)
    data = ReportData(
        name=report.name,
        period=report.period,
        timezone=report.timezone,
        since=since,
        until=until,
        generated_at=datetime.now(tz),
        base_url=report.base_url.rstrip("/"),
    )
    scope = scope_conditions(report)
    in_period = [*period_conditions(since, until), *scope]
    with store.read_session() as session:
        rows = session.execute(
            select(
                Job.source, Job.source_ref, Job.status, Job.created_at, Job.finished_at, Job.latency_ms
            ).where(*in_period)
        ).all()
        failures = session.execute(
            select(Job.error_code, func.count(), func.max(Job.error))
            .where(*in_period, Job.status == JobStatus.FAILED)
            .group_by(Job.error_code)
        ).all()
        questions = session.scalars(
            select(Job.question).where(*in_period, Job.source.not_in(PROMPT_SOURCES))
        ).all()
    _count(data, rows, tz)
    data.failures = _failure_reasons(failures)
    data.questions = _frequent_questions(questions)
    reviewed_in_period = [Job.reviewed_at >= since, Job.reviewed_at < until, *scope]
    data.reviews = review_stats(store, where=reviewed_in_period)
    data.answers_reviewed = review_stats(store, where=in_period)
    # Thumbnails are read relative to the database's folder, which is data_dir.
    links = LinkContext(tz, data.base_url, store.path.parent, images or ImagesConfig())
    data.items, data.items_total = new_items(store, in_period, links)
    data.corrections = corrections(store, reviewed_in_period, links)
    return data


def _count(data: ReportData, rows: Sequence[Any], tz: ZoneInfo) -> None:
    """Totals, per-source and per-watch counts, latency, throughput, hours and days from the light rows."""
    statuses: Counter[str] = Counter()
    per_source: dict[str, Counter[str]] = defaultdict(Counter)
    per_watch: dict[str, Counter[str]] = defaultdict(Counter)
    turnaround: list[float] = []
    processing: list[float] = []
    data.days = _local_days(data.since, data.until)
    day_index = {day: index for index, day in enumerate(data.days)}
    daily: dict[str, list[int]] = defaultdict(lambda: [0] * len(data.days))
    data.daily_failed = [0] * len(data.days)
    for source, source_ref, status, created, finished, latency_ms in rows:
        statuses[status] += 1
        per_source[source][status] += 1
        if source == "watch":
            per_watch[source_ref][status] += 1
        local = created.astimezone(tz)
        data.hours[local.hour] += 1
        daily[source][day_index[local.date()]] += 1
        if status == JobStatus.FAILED:
            data.daily_failed[day_index[local.date()]] += 1
        if status == JobStatus.DONE and finished is not None:
            turnaround.append((finished - created).total_seconds() * 1000)
            if latency_ms is not None:
                processing.append(float(latency_ms))
    data.total = len(rows)
    data.done, data.failed = statuses[JobStatus.DONE], statuses[JobStatus.FAILED]
    data.pending = data.total - data.done - data.failed
    data.by_source = [_source_count(key, *source_names(key), c) for key, c in _by_size(per_source)]
    data.by_watch = [_source_count(key, key, key, c) for key, c in _by_size(per_watch)]
    data.daily = {source: daily[source] for source, _ in _by_size(per_source)}
    data.turnaround = _latency(turnaround)
    data.processing = _latency(processing)
    finished_jobs = data.done + data.failed
    hours = data.period_hours
    data.per_hour = finished_jobs / hours if hours > 0 else 0.0
    data.per_day = finished_jobs / len(data.days) if data.days else 0.0
    ranked = sorted(range(24), key=lambda hour: (-data.hours[hour], hour))
    data.busiest_hours = [(hour, data.hours[hour]) for hour in ranked[:BUSIEST_HOURS] if data.hours[hour]]


def _local_days(since: datetime, until: datetime) -> list[date]:
    """Every local date from since's to the one containing the last instant before `until`."""
    first = since.date()
    last = (until.astimezone(UTC) - timedelta(microseconds=1)).astimezone(since.tzinfo).date()
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def _by_size(groups: dict[str, Counter[str]]) -> list[tuple[str, Counter[str]]]:
    # Largest first, then by name, so the order is stable between runs.
    return sorted(groups.items(), key=lambda item: (-item[1].total(), item[0]))


def _source_count(key: str, zh: str, en: str, statuses: Counter[str]) -> SourceCount:
    return SourceCount(key, zh, en, statuses.total(), statuses[JobStatus.DONE], statuses[JobStatus.FAILED])


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _latency(values: list[float]) -> Latency:
    if not values:
        return Latency(0, None, None)
    return Latency(len(values), percentile(values, 0.50), percentile(values, 0.95))


def _failure_reasons(rows: Sequence[Any]) -> list[FailureReason]:
    reasons = []
    for code, count, example in rows:
        code = code or "unexpected"
        if code in all_codes() and "{" not in msg(code).zh:
            zh, en = msg(code).zh, msg(code).en
        else:
            # A message with details ("{reason}", "{pixels}") is shown as one real instance of it.
            zh, _, en = (example or code).partition(" / ")
            en = en or zh
        reasons.append(FailureReason(code, zh, en, int(count), example or ""))
    return sorted(reasons, key=lambda reason: (-reason.count, reason.code))


def normalize_question(text: str) -> str:
    """The grouping key of a question: NFKC, case-folded, without whitespace, punctuation or symbols."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if not unicodedata.category(ch).startswith(("Z", "P", "S", "C")))


def _frequent_questions(questions: Sequence[str]) -> list[QuestionCount]:
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for question in questions:
        key = normalize_question(question)
        if key:
            groups[key][" ".join(question.split())] += 1
    ranked = sorted(groups.values(), key=lambda forms: (-forms.total(), forms.most_common(1)[0][0]))
    return [QuestionCount(forms.most_common(1)[0][0], forms.total()) for forms in ranked[:MAX_QUESTIONS]]
