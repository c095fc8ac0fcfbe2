"""`tuwen report`: write reports on demand, for their usual period or any dates a person gives.

Dates are local calendar days (YYYY-MM-DD) in each report's timezone, and both are inclusive, because that
is what a person means by "from the 1st to the 7th":

- `--since A --until B`: from local midnight starting A to local midnight ending B (the whole of day B);
- `--since A` alone: from A through the end of today;
- `--until B` alone: the report's usual period (day, week, month) ending with day B;
- neither: the usual period of a run now (yesterday for a daily report, the last 7 days, last month).

Without `--name`, every configured report is written; with no `[[report]]` at all, a built-in daily report
named "adhoc" covering every source.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from db.store import Store
from service.config import Config, ReportConfig
from service.messages import Message, msg
from service.reports.content import local_midnight, period_bounds
from service.reports.render import ReportFiles, write_report

DEFAULT_REPORT_NAME = "adhoc"
# The longest period one on-demand report may cover (a year and a day: any calendar year, leap or not).
MAX_DAYS = 366


class ReportUsageError(Exception):
    """A bad command line (date, range or name), with the catalogue message to show."""

    def __init__(self, message: Message) -> None:
        super().__init__(str(message))
        self.message = message


def default_report() -> ReportConfig:
    """The report used when the config has no `[[report]]`: daily, every source, every output."""
    return ReportConfig(name=DEFAULT_REPORT_NAME, period="day")


def choose_reports(config: Config, name: str | None) -> list[ReportConfig]:
    """The reports to write: the one named, or all configured ones, or the built-in default."""
    configured = config.report or [default_report()]
    if name is None:
        return list(configured)
    chosen = [report for report in configured if report.name == name]
    if not chosen:
        names = ", ".join(report.name for report in configured)
        raise ReportUsageError(msg("report_unknown_name", name=name, names=names))
    return chosen


def parse_day(option: str, value: str | None) -> date | None:
    """A YYYY-MM-DD option value as a date; None when not given. Raises ReportUsageError."""
    if value is None:
        return None
    try:
        # fromisoformat alone would also take "20250301" and week dates; people are told YYYY-MM-DD.
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise ReportUsageError(msg("history_bad_date", name=option, value=value)) from None


def yesterday(timezone: str, now: datetime | None = None) -> date:
    """The calendar day before today in `timezone`: the Reports tab's default period."""
    moment = now or datetime.now().astimezone()
    return moment.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


def check_length(since: date, until: date) -> None:
    """Refuse a period longer than MAX_DAYS days (both inclusive) with ReportUsageError."""
    days = (until - since).days + 1
    if days > MAX_DAYS:
        raise ReportUsageError(msg("report_range_too_long", days=days, limit=MAX_DAYS))


def bounds_for(
    report: ReportConfig, since: date | None, until: date | None, now: datetime
) -> tuple[datetime, datetime]:
    """The period `[start, end)` for the given inclusive local days (see the module docstring)."""
    tz = ZoneInfo(report.timezone)
    if since is not None and until is not None and since > until:
        raise ReportUsageError(msg("report_bad_range", since=since, until=until))
    if until is not None:
        end = local_midnight(until + timedelta(days=1), tz)
        if since is None:
            return period_bounds(report, end)
        return local_midnight(since, tz), end
    if since is not None:
        today = now.astimezone(tz).date()
        if since > today:
            raise ReportUsageError(msg("report_bad_range", since=since, until=today))
        return local_midnight(since, tz), local_midnight(today + timedelta(days=1), tz)
    return period_bounds(report, now)


def run_reports(
    config: Config,
    *,
    name: str | None = None,
    since: str | None = None,
    until: str | None = None,
    out_dir: Path | None = None,
    now: datetime | None = None,
) -> list[tuple[ReportConfig, ReportFiles]]:
    """Write the chosen reports for the given dates; raises ReportUsageError before writing anything."""
    reports = choose_reports(config, name)
    since_day, until_day = parse_day("--since", since), parse_day("--until", until)
    moment = now or datetime.now().astimezone()
    periods = [bounds_for(report, since_day, until_day, moment) for report in reports]
    store = Store(config.db_path)
    try:
        store.migrate()
        return [
            (report, write_report(store, config, report, start, end, out_dir=out_dir))
            for report, (start, end) in zip(reports, periods, strict=True)
        ]
    finally:
        store.close()
