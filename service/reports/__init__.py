"""Summary reports: what the service did in a period, computed from the history and written to files.

- `service.reports.content`: `collect()` computes every number a report shows (`ReportData`) for a period
  `[since, until)`, and `period_bounds()` says which period a run at a given time covers.
- `service.reports.render`: `write_report()` writes the Markdown, HTML, CSV and PNG files and returns their
  paths (`ReportFiles`) with a short Chinese summary for chats.
- `service.reports.chart` and `service.reports.html`: the chart and the self-contained HTML page.

The scheduler (`tuwen serve`) and `tuwen report` both go through `write_report`, so a scheduled report and an
on-demand one for the same period are the same files.
"""

from service.reports.content import ReportData, collect, period_bounds
from service.reports.render import ReportFiles, write_report

__all__ = ["ReportData", "ReportFiles", "collect", "period_bounds", "write_report"]
