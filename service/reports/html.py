"""The report as one self-contained HTML file: inline CSS, thumbnails and chart as data: URIs, no script.

It is opened from a file share or a mail attachment, often without network, so it must not fetch anything:
no fonts, stylesheets or images from elsewhere. A Content-Security-Policy meta tag says so to the browser
as well, which also keeps any script out should escaping ever fail. Jinja2 autoescapes every value; model
answers, questions, file names and chat ids are untrusted text and are shown as text.
"""

from __future__ import annotations

import base64
import functools

from jinja2 import Environment, StrictUndefined, Template

from service.messages import msg
from service.reports.content import ReportData
from service.reports.text import fmt_ms, hour_label, key_lines, period_label, review_lines

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_TEMPLATE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ t('report_title', name=d.name).zh }} {{ period }}</title>
<style>
body { font: 15px/1.55 system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif;
       color: #222; margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.en { color: #777; font-size: .9em; } .meta { color: #555; }
.key li { margin: .2em 0; } table { border-collapse: collapse; margin: .5em 0 1em; width: 100%; }
th, td { border: 1px solid #ddd; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.n { text-align: right; white-space: nowrap; }
td.text { white-space: pre-wrap; word-break: break-word; max-width: 380px; }
img.thumb { max-width: 120px; max-height: 120px; display: block; }
img.chart { max-width: 100%; height: auto; border: 1px solid #eee; }
.corrected { color: #a33; } .notes { color: #666; font-size: .9em; margin-top: 2em; }
</style>
</head>
<body>
{% macro label(code) %}{% set m = t(code) %}{{ m.zh }} <span class="en">{{ m.en }}</span>{% endmacro %}
{% macro line(m) %}{{ m.zh }}<br><span class="en">{{ m.en }}</span>{% endmacro %}
<h1>{{ label_title }} <span class="en">{{ t('report_title', name=d.name).en }}</span></h1>
<p class="meta">{{ line(t('report_period', period=period, timezone=d.timezone)) }}<br>
{{ t('report_generated', time=generated) }}</p>
<ul class="key">{% for m in key %}<li>{{ line(m) }}</li>{% endfor %}</ul>
{% if chart %}<p><img class="chart" src="data:image/png;base64,{{ chart }}"
  alt="{{ t('report_chart_alt') }}"></p>{% endif %}

<h2>{{ label('report_by_source') }}</h2>
{% if d.by_source %}<table><tr><th>{{ label('report_col_source') }}</th>
<th>{{ label('report_col_total') }}</th>
<th>{{ label('report_col_done') }}</th><th>{{ label('report_col_failed') }}</th></tr>
{% for r in d.by_source %}<tr><td>{{ r.zh }} <span class="en">{{ r.en }}</span></td>
<td class="n">{{ r.total }}</td><td class="n">{{ r.done }}</td><td class="n">{{ r.failed }}</td></tr>
{% endfor %}</table>{% else %}<p>{{ label('report_no_items') }}</p>{% endif %}
{% if d.by_watch %}<h2>{{ label('report_by_watch') }}</h2>
<table><tr><th>{{ label('report_col_watch') }}</th><th>{{ label('report_col_total') }}</th>
<th>{{ label('report_col_done') }}</th><th>{{ label('report_col_failed') }}</th></tr>
{% for r in d.by_watch %}<tr><td>{{ r.key }}</td><td class="n">{{ r.total }}</td>
<td class="n">{{ r.done }}</td><td class="n">{{ r.failed }}</td></tr>{% endfor %}</table>{% endif %}

<h2>{{ label('report_failures') }}</h2>
{% if d.failures %}<table><tr><th>{{ label('report_col_code') }}</th><th>{{ label('report_col_reason') }}</th>
<th>{{ label('report_col_count') }}</th></tr>
{% for f in d.failures %}<tr><td><code>{{ f.code }}</code></td>
<td>{{ f.zh }}<br><span class="en">{{ f.en }}</span></td><td class="n">{{ f.count }}</td></tr>
{% endfor %}</table>
{% else %}<p>{{ label('report_no_failures') }}</p>{% endif %}

<h2>{{ label('report_busiest_hours') }}</h2>
{% if d.busiest_hours %}<table>
<tr><th>{{ label('report_col_hour') }}</th><th>{{ label('report_col_count') }}</th></tr>
{% for hour, count in d.busiest_hours %}<tr><td>{{ hour_label(hour) }}</td><td class="n">{{ count }}</td></tr>
{% endfor %}</table>{% else %}<p>—</p>{% endif %}

<h2>{{ label('report_questions') }}</h2>
{% if d.questions %}<table>
<tr><th>{{ label('report_col_question') }}</th><th>{{ label('report_col_count') }}</th></tr>
{% for q in d.questions %}<tr><td class="text">{{ q.text }}</td><td class="n">{{ q.count }}</td></tr>
{% endfor %}
</table>{% else %}<p>{{ label('report_no_questions') }}</p>{% endif %}

<h2>{{ label('report_review') }}</h2>
<ul class="key">{% for m in reviews %}<li>{{ line(m) }}</li>{% endfor %}</ul>
{% if d.corrections %}<h3>{{ label('report_corrections') }}</h3>
<table><tr><th>{{ label('report_col_who') }}</th><th>{{ label('ui_col_answer') }}</th>
<th>{{ label('report_col_correction') }}</th></tr>
{% for i in d.corrections %}<tr><td>{{ i.who }}</td><td class="text">{{ i.answer }}</td>
<td class="text corrected">{{ i.correction }}</td></tr>{% endfor %}</table>{% endif %}

<h2>{{ label('report_items') }}</h2>
{% if d.history_url %}<p><a href="{{ d.history_url }}">{{ label('report_open_history') }}</a></p>{% endif %}
{% if d.items %}<table><tr><th>{{ label('ui_col_image') }}</th><th>{{ label('ui_col_time') }}</th>
<th>{{ label('report_col_who') }}</th><th>{{ label('ui_col_question') }}</th>
<th>{{ label('ui_col_answer') }}</th></tr>
{% for i in d.items %}<tr>
<td>{% if thumbs[i.job_id] %}
<img class="thumb" src="data:image/jpeg;base64,{{ thumbs[i.job_id] }}" alt="">{% endif %}</td>
<td>{{ i.created.strftime('%m-%d %H:%M') }}<br><span class="en">{{ i.source_zh }}</span></td>
<td>{% if i.link %}<a href="{{ i.link }}">{{ i.who }}</a>{% else %}{{ i.who }}{% endif %}</td>
<td class="text">{{ i.question }}</td>
<td class="text">{% if i.correction %}<span class="corrected">{{ i.correction }}</span>
{%- else %}{{ i.answer }}{% endif %}</td>
</tr>{% endfor %}</table>
{% if more > 0 %}<p>{{ line(t('report_items_more', more=more)) }}</p>{% endif %}
{% else %}<p>{{ label('report_no_items') }}</p>{% endif %}

<p class="notes">{{ line(t('report_notes', timezone=d.timezone)) }}</p>
</body>
</html>
"""


@functools.cache
def _template() -> Template:
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(t=msg, hour_label=hour_label, fmt_ms=fmt_ms)
    return env.from_string(_TEMPLATE)


def render_html(data: ReportData, chart_png: bytes | None) -> str:
    """The report page; `chart_png` is embedded when given."""
    thumbs = {
        item.job_id: base64.b64encode(item.thumbnail).decode("ascii") if item.thumbnail else ""
        for item in data.items
    }
    return _template().render(
        d=data,
        csp=_CSP,
        label_title=msg("report_title", name=data.name).zh,
        period=period_label(data),
        generated=f"{data.generated_at:%Y-%m-%d %H:%M}",
        key=key_lines(data),
        reviews=review_lines(data),
        chart=base64.b64encode(chart_png).decode("ascii") if chart_png else "",
        thumbs=thumbs,
        more=data.items_total - len(data.items),
    )
