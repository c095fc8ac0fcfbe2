"""The report's PNG chart: jobs per local day, one stacked bar segment per source, and each day's failed
share as a line on a second axis (0–100 %), both axes labelled.

matplotlib is used through its object API (`Figure` + the Agg canvas), never `pyplot`: pyplot keeps global
state and picks a GUI backend, and reports are drawn in a worker thread of a headless service.

Chinese labels need a CJK font. matplotlib's own font list does not know the system's `.ttc` collections, so
the font is found with fontconfig (`fc-match`/`fc-list`, present wherever Noto CJK is installed) and added to
matplotlib by file. When no CJK font exists the chart falls back to English labels, so it never shows boxes
in place of characters.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.messages import msg
from service.reports.content import ReportData

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(f"tuwen.{__name__}")

# Preferred first; any font fontconfig says covers Chinese will do.
_CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Noto Serif CJK SC")
_FAILED_COLOUR = "#b42318"
_COLOURS = ("#3b6ea8", "#e08a2e", "#4d9a5b", "#c4463a", "#8a6bb8", "#8c6d4f", "#d17db5", "#7f7f7f")


@functools.cache
def cjk_font_path() -> Path | None:
    """A font file that covers Chinese, found through fontconfig; None when there is none (or no fc-*)."""
    if shutil.which("fc-match") is None:
        return None
    for family in _CJK_FAMILIES:
        found = _fc(["fc-match", "--format=%{file}|%{family}", f"{family}:lang=zh-cn"])
        if found and "|" in found:
            file, families = found.split("|", 1)
            # fc-match always answers something; accept it only if it is the family asked for.
            if family.lower() in families.lower() and Path(file).is_file():
                return Path(file)
    listed = _fc(["fc-list", ":lang=zh-cn", "file"])
    for line in (listed or "").splitlines():
        path = Path(line.strip().rstrip(":"))
        if path.is_file():
            return path
    return None


def _fc(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("fontconfig query %s failed: %s", command[0], exc)
        return None


def render_chart(data: ReportData) -> bytes:
    """The PNG bytes of the jobs-per-day chart with the failed share (1000 x 450 px)."""
    buffer = io.BytesIO()
    chart_figure(data).savefig(buffer, format="png")
    return buffer.getvalue()


def chart_figure(data: ReportData) -> Figure:
    """The chart as a matplotlib Figure: bars on `axes[0]`, the failed share on its twin `axes[1]`."""
    from matplotlib import font_manager
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    font = cjk_font_path()
    family: str | None = None
    if font is not None:
        try:
            font_manager.fontManager.addfont(str(font))
            family = font_manager.FontProperties(fname=str(font)).get_name()
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("cannot use the CJK font %s (%s); the chart's labels will be in English", font, exc)
    chinese = family is not None
    rc: dict[str, Any] = {"font.family": [family, "DejaVu Sans"]} if family else {}

    def label(code: str) -> str:
        text = msg(code)
        return f"{text.zh} / {text.en}" if chinese else text.en

    import matplotlib

    with matplotlib.rc_context(rc):  # type: ignore[arg-type]  # the stubs list every rc key as a Literal
        figure = Figure(figsize=(10, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        _draw_jobs(axes, data, chinese, label)
        failed = _draw_failed_share(axes, data, label)
        if data.by_source:
            # Outside the plot, right of the second axis: inside it would cover the tallest bars.
            bars, names = axes.get_legend_handles_labels()
            line, line_name = failed.get_legend_handles_labels()
            axes.legend(
                bars + line,
                names + line_name,
                loc="upper left",
                bbox_to_anchor=(1.08, 1.0),
                fontsize="small",
                frameon=False,
            )
        else:
            axes.text(0.5, 0.5, label("report_no_items"), ha="center", transform=axes.transAxes)
        figure.tight_layout()
    return figure


def _draw_jobs(axes: Any, data: ReportData, chinese: bool, label: Callable[[str], str]) -> None:
    """Stacked bars of jobs per day, one colour per source, on labelled axes."""
    from matplotlib.ticker import MaxNLocator

    positions = list(range(len(data.days)))
    bottoms = [0] * len(data.days)
    for index, row in enumerate(data.by_source):
        counts = data.daily.get(row.key, [0] * len(data.days))
        axes.bar(
            positions,
            counts,
            bottom=bottoms,
            label=row.zh if chinese else row.en,
            color=_COLOURS[index % len(_COLOURS)],
            width=0.8,
        )
        bottoms = [b + c for b, c in zip(bottoms, counts, strict=True)]
    axes.set_title(label("report_chart_title"))
    axes.set_xlabel(label("report_chart_x"))
    axes.set_ylabel(label("report_chart_y"))
    step = max(1, len(positions) // 16)  # at most ~16 date labels, however long the period
    axes.set_xticks(positions[::step], [day.strftime("%m-%d") for day in data.days[::step]])
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # jobs are whole numbers
    axes.set_xlim(-0.6, max(len(positions), 1) - 0.4)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)


def _draw_failed_share(axes: Any, data: ReportData, label: Callable[[str], str]) -> Any:
    """Each day's failed share (0–100 %) as a line on a second, labelled axis; a day without jobs is a gap."""
    failed = axes.twinx()
    shares = [float("nan") if share is None else share for share in data.failed_shares]
    name = label("report_chart_failed")
    failed.plot(range(len(shares)), shares, color=_FAILED_COLOUR, marker="o", linewidth=2, label=name)
    failed.set_ylim(0, 100)
    failed.set_ylabel(name, color=_FAILED_COLOUR)
    failed.tick_params(axis="y", colors=_FAILED_COLOUR)
    return failed
