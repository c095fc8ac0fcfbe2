"""`tuwen report` end to end: a real process over a history filled through the real queue, writing every
configured report (or the built-in 'adhoc' one) for inclusive local dates, and refusing bad dates in both
languages before writing anything."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from service.cli import main
from service.config import ReportConfig
from service.messages import msg
from service.reports.adhoc import ReportUsageError, bounds_for
from tests.report_history import History, build_history

REPO = Path(__file__).resolve().parents[1]
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, ocr_engine: object) -> History:
    return build_history(tmp_path_factory.mktemp("report-cli"), ocr_engine)


def write_config(path: Path, data_dir: Path, reports: str = "") -> Path:
    path.write_text(
        f'[storage]\ndata_dir = "{data_dir}"\n\n[http]\nenabled = false\n\n{reports}', encoding="utf-8"
    )
    return path


def tuwen(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TUWEN_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "report", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))


def count_jobs(history: History, since_utc: str, until_utc: str, where: str = "1") -> int:
    with sqlite3.connect(history.db_path) as conn:
        query = f"SELECT COUNT(*) FROM jobs WHERE created_at >= ? AND created_at < ? AND {where}"
        return int(conn.execute(query, (since_utc, until_utc)).fetchone()[0])


REPORTS = """
[[report]]
name = "周报"
period = "week"
timezone = "Asia/Shanghai"

[[report]]
name = "kiosk"
sources = ["kiosk"]
outputs = ["csv", "markdown"]
folder = "share"
"""


def test_every_configured_report_for_inclusive_local_dates(history: History, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", history.config.storage.data_dir, REPORTS)
    out = tmp_path / "out"
    result = tuwen("-c", str(config), "--since", "2025-03-03", "--until", "2025-03-05", "--out", str(out))
    assert result.returncode == 0, result.stderr
    weekly = out / "周报_2025-03-03_2025-03-05.csv"
    kiosk = out / "kiosk_2025-03-03_2025-03-05.csv"
    printed = result.stdout.splitlines()
    assert (
        str(msg("report_written", name="周报")) in printed
        and f"  {weekly}" in printed
        and f"  {kiosk}" in printed
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"周报_2025-03-03_2025-03-05.{ext}" for ext in ("md", "html", "csv", "png")]
        + ["kiosk_2025-03-03_2025-03-05.csv", "kiosk_2025-03-03_2025-03-05.md"]
    )
    # The --until day is included whole: 2025-03-05 ends at 16:00 UTC.
    period = ("2025-03-02 16:00:00.000000", "2025-03-05 16:00:00.000000")
    assert len(csv_rows(weekly)) == count_jobs(history, *period) == 15
    assert len(csv_rows(kiosk)) == count_jobs(history, *period, "source = 'kiosk'") == 3
    # The kiosk report is also copied into its folder (relative to the config file).
    assert sorted(p.name for p in (tmp_path / "share").iterdir()) == [
        "kiosk_2025-03-03_2025-03-05.csv",
        "kiosk_2025-03-03_2025-03-05.md",
    ]


def test_one_named_report_into_its_default_folder(history: History, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", history.config.storage.data_dir, REPORTS)
    result = tuwen("-c", str(config), "--name", "kiosk", "--since", "2025-03-05", "--until", "2025-03-05")
    assert result.returncode == 0, result.stderr
    folder = history.config.storage.data_dir / "reports" / "kiosk" / "2025-03-05"
    rows = csv_rows(folder / "kiosk_2025-03-05.csv")
    day = ("2025-03-04 16:00:00.000000", "2025-03-05 16:00:00.000000")
    assert len(rows) == count_jobs(history, *day, "source = 'kiosk'") == 1
    assert "周报" not in result.stdout


def test_without_any_report_the_builtin_adhoc_daily_report(history: History, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", history.config.storage.data_dir)
    result = tuwen("-c", str(config), "--since", "2025-03-04", "--until", "2025-03-04")
    assert result.returncode == 0, result.stderr
    folder = history.config.storage.data_dir / "reports" / "adhoc" / "2025-03-04"
    rows = csv_rows(folder / "adhoc_2025-03-04.csv")
    assert len(rows) == count_jobs(history, "2025-03-03 16:00:00.000000", "2025-03-04 16:00:00.000000") == 6
    markdown = (folder / "adhoc_2025-03-04.md").read_text(encoding="utf-8")
    assert "共 6 项：完成 4 项，失败 2 项" in markdown


def test_a_bad_date_exits_non_zero_with_a_bilingual_message(history: History, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", tmp_path / "data")
    result = tuwen("-c", str(config), "--since", "2025-3-4")
    expected = msg("history_bad_date", name="--since", value="2025-3-4")
    assert result.returncode == 2 and expected.zh in result.stderr and expected.en in result.stderr
    assert not (tmp_path / "data" / "reports").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--until", "2025-02-30"], msg("history_bad_date", name="--until", value="2025-02-30")),
        (["--since", "yesterday"], msg("history_bad_date", name="--since", value="yesterday")),
        (["--since", "20250301"], msg("history_bad_date", name="--since", value="20250301")),
        (
            ["--since", "2025-03-05", "--until", "2025-03-04"],
            msg("report_bad_range", since="2025-03-05", until="2025-03-04"),
        ),
        (["--name", "nope"], msg("report_unknown_name", name="nope", names="adhoc")),
    ],
)
def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: object
) -> None:
    config = write_config(tmp_path / "config.toml", tmp_path / "data")
    assert main(["report", "-c", str(config), *args]) == 2
    assert capsys.readouterr().err.strip() == str(expected)
    assert not (tmp_path / "data" / "reports").exists()


NOW = datetime(2025, 3, 12, 3, 0, tzinfo=UTC)  # 11:00 on Wednesday 12 March in Shanghai


@pytest.mark.parametrize(
    ("period", "since", "until", "start", "end"),
    [
        ("day", None, None, date(2025, 3, 11), date(2025, 3, 12)),  # yesterday
        ("week", None, None, date(2025, 3, 5), date(2025, 3, 12)),
        ("week", date(2025, 3, 10), None, date(2025, 3, 10), date(2025, 3, 13)),  # through today
        ("week", None, date(2025, 3, 9), date(2025, 3, 3), date(2025, 3, 10)),  # the week ending that day
        ("month", None, date(2025, 2, 28), date(2025, 2, 1), date(2025, 3, 1)),
        ("day", date(2025, 3, 1), date(2025, 3, 1), date(2025, 3, 1), date(2025, 3, 2)),
    ],
)
def test_bounds_for_dates_people_give(
    period: str, since: date | None, until: date | None, start: date, end: date
) -> None:
    report = ReportConfig(name="r", period=period)  # type: ignore[arg-type]
    got = bounds_for(report, since, until, NOW)
    midnight = datetime.min.time()
    assert got == (datetime.combine(start, midnight, SHANGHAI), datetime.combine(end, midnight, SHANGHAI))


def test_a_start_after_today_is_refused() -> None:
    with pytest.raises(ReportUsageError):
        bounds_for(ReportConfig(name="r"), date(2025, 3, 13), None, NOW)
