"""The report as text: number formatting, the key lines, the Markdown file and the short Chinese summary.

Every sentence comes from the message catalogue (`report_*` codes); this module only chooses which, fills
them and lays them out. Model output and file names are untrusted: Markdown cells are escaped so that a
viewer which renders inline HTML (most do) shows an answer's `<script>` as text.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta

from db.history import ReviewStats
from service.messages import Message, msg
from service.reports.content import Latency, ReportData, ReportItem

MD_ANSWER_CHARS = 300
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|<>&~#!])")


def fmt_ms(value: float | None) -> str:
    """A duration for people: '850 ms', '4.2 s', '3.5 min', '2.1 h'; '—' when unknown."""
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    seconds = value / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_pct(value: float | None) -> str:
    """'83.3%'; '—' when unknown."""
    return "—" if value is None else f"{value * 100:.1f}%"


def fmt_rate(value: float) -> str:
    """A per-hour or per-day rate, with one decimal only where it matters."""
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


def hour_label(hour: int) -> str:
    """'10:00–11:00' for hour 10 (local time)."""
    return f"{hour:02d}:00–{(hour + 1) % 24:02d}:00"


def _aligned(moment: datetime) -> bool:
    return moment.time() == time.min


def period_label(data: ReportData) -> str:
    """'2025-03-04', '2025-03-01 – 2025-03-07' (whole local days, both inclusive), or exact local times."""
    if _aligned(data.since) and _aligned(data.until):
        first, last = data.since.date(), data.until.date() - timedelta(days=1)
        return first.isoformat() if first == last else f"{first.isoformat()} – {last.isoformat()}"
    return f"{data.since:%Y-%m-%d %H:%M} – {data.until:%Y-%m-%d %H:%M}"


def period_stamp(since: datetime, until: datetime) -> str:
    """A sortable folder/file name for the period: 'YYYY-MM-DD' for one local day, else 'FIRST_LAST'.

    Both days are inclusive; periods that do not start and end at local midnight carry the times
    ('2025-03-04T0930_2025-03-04T1800').
    """
    if _aligned(since) and _aligned(until):
        first, last = since.date(), until.date() - timedelta(days=1)
        return first.isoformat() if first == last else f"{first.isoformat()}_{last.isoformat()}"
    return f"{since:%Y-%m-%dT%H%M}_{until:%Y-%m-%dT%H%M}"


def kind(data: ReportData) -> Message:
    """'日报 / daily report' and so on."""
    return msg(f"report_kind_{data.period}")


def latency_lines(turnaround: Latency, processing: Latency) -> list[Message]:
    """The two latency sentences (turnaround and processing, p50/p95)."""
    return [
        msg(
            "report_turnaround",
            p50=fmt_ms(turnaround.p50_ms),
            p95=fmt_ms(turnaround.p95_ms),
            n=turnaround.count,
        ),
        msg("report_processing", p50=fmt_ms(processing.p50_ms), p95=fmt_ms(processing.p95_ms)),
    ]


def key_lines(data: ReportData) -> list[Message]:
    """Totals, latency and throughput: the report's opening lines."""
    return [
        msg("report_totals", total=data.total, done=data.done, failed=data.failed, pending=data.pending),
        *latency_lines(data.turnaround, data.processing),
        msg("report_throughput", per_hour=fmt_rate(data.per_hour), per_day=fmt_rate(data.per_day)),
    ]


def review_lines(data: ReportData) -> list[Message]:
    """What staff reviewed in the period, the sampled accuracy with its interval, and the reviewed share."""
    lines: list[Message] = []
    reviews = data.reviews
    if reviews is None or reviews.reviewed == 0:
        lines.append(msg("report_no_reviews"))
    else:
        lines.append(
            msg(
                "report_reviews_recorded",
                reviewed=reviews.reviewed,
                correct=reviews.correct,
                corrected=reviews.corrected,
            )
        )
        lines.append(accuracy_line(reviews))
    answers = data.answers_reviewed
    if answers is not None and answers.done:
        lines.append(
            msg(
                "report_answers_reviewed",
                done=answers.done,
                reviewed=answers.reviewed,
                share=fmt_pct(answers.reviewed_share),
            )
        )
    return lines


def accuracy_line(stats: ReviewStats) -> Message:
    """'抽样准确率 83.3%（95% 置信区间 …）'."""
    return msg(
        "report_accuracy",
        accuracy=fmt_pct(stats.accuracy),
        low=fmt_pct(stats.ci_low),
        high=fmt_pct(stats.ci_high),
    )


def summary_zh(data: ReportData) -> str:
    """A few Chinese lines with the key numbers, for chat delivery."""
    title = msg("report_title", name=data.name).zh
    lines = [f"【{title}】{kind(data).zh} {period_label(data)}"]
    lines.append(key_lines(data)[0].zh)
    if data.by_source:
        sources = "，".join(f"{row.zh} {row.total}" for row in data.by_source)
        lines.append(msg("report_summary_sources", sources=sources).zh)
    if data.failures:
        reasons = "，".join(f"{reason.zh} {reason.count}" for reason in data.failures[:3])
        lines.append(msg("report_summary_failures", reasons=reasons).zh)
    if data.processing.count or data.busiest_hours:
        busiest = hour_label(data.busiest_hours[0][0]) if data.busiest_hours else "—"
        lines.append(
            msg(
                "report_summary_latency",
                p50=fmt_ms(data.processing.p50_ms),
                p95=fmt_ms(data.processing.p95_ms),
                hour=busiest,
            ).zh
        )
    if data.reviews is not None and data.reviews.reviewed:
        lines.append(accuracy_line(data.reviews).zh)
    return "\n".join(lines)


def md(value: str | None, limit: int | None = None) -> str:
    """Text safe in a Markdown table cell: one line, Markdown and HTML characters escaped, optionally cut."""
    text = " ".join((value or "").split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", text)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def _h(code: str) -> str:
    return str(msg(code))


def _item_answer(item: ReportItem) -> str:
    return md(item.correction or item.answer, MD_ANSWER_CHARS)


def markdown(data: ReportData, chart_name: str | None) -> str:
    """The whole report as Markdown (GitHub-flavoured tables); `chart_name` is the PNG beside it, if any."""
    out = [f"# {md(str(msg('report_title', name=data.name)))}", ""]
    out.append(md(str(msg("report_period", period=period_label(data), timezone=data.timezone))) + "  ")
    out += [md(str(msg("report_generated", time=f"{data.generated_at:%Y-%m-%d %H:%M}"))), ""]
    out += [f"- {md(str(line))}" for line in key_lines(data)] + [""]
    if chart_name:
        out += [f"![{md(str(msg('report_chart_alt')))}]({chart_name})", ""]
    out += [f"## {_h('report_by_source')}", ""]
    headers = [
        _h("report_col_source"),
        _h("report_col_total"),
        _h("report_col_done"),
        _h("report_col_failed"),
    ]
    rows = [[md(f"{r.zh} / {r.en}"), str(r.total), str(r.done), str(r.failed)] for r in data.by_source]
    out += _table(headers, rows) if rows else [md(_h("report_no_items")), ""]
    if data.by_watch:
        out += [f"## {_h('report_by_watch')}", ""]
        headers[0] = _h("report_col_watch")
        out += _table(headers, [[md(r.key), str(r.total), str(r.done), str(r.failed)] for r in data.by_watch])
    out += [f"## {_h('report_failures')}", ""]
    if data.failures:
        headers = [_h("report_col_code"), _h("report_col_reason"), _h("report_col_count")]
        rows = [[md(f.code), md(f"{f.zh} / {f.en}"), str(f.count)] for f in data.failures]
        out += _table(headers, rows)
    else:
        out += [md(_h("report_no_failures")), ""]
    out += [f"## {_h('report_busiest_hours')}", ""]
    rows = [[hour_label(hour), str(count)] for hour, count in data.busiest_hours]
    out += _table([_h("report_col_hour"), _h("report_col_count")], rows) if rows else ["—", ""]
    out += [f"## {_h('report_questions')}", ""]
    if data.questions:
        rows = [[md(q.text, MD_ANSWER_CHARS), str(q.count)] for q in data.questions]
        out += _table([_h("report_col_question"), _h("report_col_count")], rows)
    else:
        out += [md(_h("report_no_questions")), ""]
    out += [f"## {_h('report_review')}", ""]
    out += [f"- {md(str(line))}" for line in review_lines(data)] + [""]
    if data.corrections:
        out += [f"### {_h('report_corrections')}", ""]
        headers = [_h("report_col_who"), _h("ui_col_answer"), _h("report_col_correction")]
        rows = [
            [md(i.who), md(i.answer, MD_ANSWER_CHARS), md(i.correction, MD_ANSWER_CHARS)]
            for i in data.corrections
        ]
        out += _table(headers, rows)
    out += _items_markdown(data)
    out += ["---", "", md(str(msg("report_notes", timezone=data.timezone))), ""]
    return "\n".join(out)


def _items_markdown(data: ReportData) -> list[str]:
    out = [f"## {_h('report_items')}", ""]
    if data.history_url:
        out += [f"[{md(_h('report_open_history'))}]({data.history_url})", ""]
    if not data.items:
        return out + [md(_h("report_no_items")), ""]
    headers = [_h("ui_col_time"), _h("report_col_source"), _h("report_col_who"), _h("ui_col_question")]
    headers += [_h("ui_col_answer"), _h("report_col_link")]
    rows = [
        [
            f"{item.created:%m-%d %H:%M}",
            md(item.source_zh),
            md(item.who),
            md(item.question, MD_ANSWER_CHARS),
            _item_answer(item),
            f"[#{item.job_id}]({item.link})" if item.link else f"#{item.job_id}",
        ]
        for item in data.items
    ]
    out += _table(headers, rows)
    more = data.items_total - len(data.items)
    if more > 0:
        out += [md(str(msg("report_items_more", more=more))), ""]
    return out
